"""setup.cfg's warning filters, as pytest applies them to every test: a DeprecationWarning or FutureWarning
that our code raises, or that a dependency attributes to our code (its caller), fails the test; one that
a dependency raises in its own code is shown, not an error, unless setup.cfg ignores it by exact message."""

import types
import warnings

import pytest


def module_named(name, source):
    """A module called ``name`` (warnings are attributed by the ``__name__`` of the calling frame)."""
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


OLD_FUNCTION = """
import warnings

def old():
    warnings.warn("old() is deprecated: use new()", CATEGORY, stacklevel=1)

def call(function):
    return function()
"""


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
@pytest.mark.parametrize("ours", ["fconv_plugin.models.probe", "fconv_runtime.probe"])
def test_a_deprecation_in_our_code_fails_the_test(ours, category):
    module = module_named(ours, OLD_FUNCTION.replace("CATEGORY", category.__name__))
    with pytest.raises(category, match=r"old\(\) is deprecated"):
        module.old()


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_dependencys_deprecation_that_our_code_calls_fails_the_test(category):
    """The dependency warns with stacklevel=2 (as torch and fairseq do for deprecated calls): the
    warning is attributed to our module, the caller."""
    dependency = module_named(
        "torch.probe",
        """
import warnings

def deprecated_op():
    warnings.warn("deprecated_op is deprecated", CATEGORY, stacklevel=2)
""".replace("CATEGORY", category.__name__),
    )
    ours = module_named("fconv_plugin.modules.probe", OLD_FUNCTION)
    with pytest.raises(category, match="deprecated_op is deprecated"):
        ours.call(dependency.deprecated_op)


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_dependencys_own_deprecation_is_shown_not_an_error(category):
    dependency = module_named("torch.probe", OLD_FUNCTION.replace("CATEGORY", category.__name__))
    with warnings.catch_warnings(record=True) as caught:  # records; the filters stay setup.cfg's
        dependency.old()
    assert [type(w.message) for w in caught] == [category]
