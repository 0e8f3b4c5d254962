import pytest

from fconv_plugin.modules.layer_spec import LayerSpecError, parse_attention, parse_layers, safe_literal


def test_parses_fairseq_presets_to_the_same_lists_as_eval():
    for spec in [
        "[(512, 3)] * 20",
        "[(512, 3)] * 9 + [(1024, 3)] * 4 + [(2048, 1)] * 2",
        "[(512, 3)] * 6 + [(768, 3)] * 4 + [(1024, 3)] * 3 + [(2048, 1)] * 1 + [(4096, 1)] * 1",
        "[(256, 3)] * 4",
        "[(32, 3), (32, 2, 2)] + 2 * [(16, 5, 0)]",
    ]:
        # trusted literals, test only; residual and dilation default to 1
        expected = [t + (1,) * (4 - len(t)) for t in eval(spec)]
        assert parse_layers(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "__import__('os').system('touch /tmp/fconv_ext_pwned')",
        "[(512, 3)] * __import__('os').getpid()",
        "[(x, 3)]",
        "[(512, 3)].__class__",
        "[(512, 3) for _ in range(3)]",
        "lambda: 0",
        "[(512, 3)] * 10**9",
        "[('512', 3)]",
        "[(512.0, 3)]",
    ],
)
def test_refuses_anything_but_literals(spec, tmp_path):
    with pytest.raises(LayerSpecError, match="invalid layer specification|too large|items"):
        parse_layers(spec)


def test_dilation_is_the_optional_fourth_element():
    layers = parse_layers("[(512, 3, 1, 2)] * 2 + [(256, 5)]")
    assert layers == [(512, 3, 1, 2), (512, 3, 1, 2), (256, 5, 1, 1)]
    assert [layer.dilation for layer in layers] == [2, 2, 1]
    assert layers[0].out_channels == 512 and layers[0].kernel_width == 3 and layers[0].residual == 1
    with pytest.raises(LayerSpecError, match="dilation=0"):
        parse_layers("[(512, 3, 1, 0)]")
    with pytest.raises(LayerSpecError, match="layer 0 is"):
        parse_layers("[(512, 3, 1, 2, 1)]")


def test_messages_say_what_is_wrong():
    with pytest.raises(LayerSpecError, match="layer 1 is \\(512,\\)"):
        parse_layers("[(512, 3), (512,)]")
    with pytest.raises(LayerSpecError, match="only 1 earlier outputs exist"):
        parse_layers("[(512, 3, 2)]")
    with pytest.raises(LayerSpecError, match="must be positive"):
        parse_layers("[(0, 3)]")
    with pytest.raises(LayerSpecError, match="non-empty list"):
        parse_layers("[]")
    with pytest.raises(LayerSpecError):
        safe_literal("[(512, 3)")  # syntax error


def test_attention_selection():
    assert parse_attention("True", 3) == [True] * 3
    assert parse_attention("False", 2) == [False, False]
    assert parse_attention("[True, False, True]", 3) == [True, False, True]
    with pytest.raises(LayerSpecError, match="lists 2 layers but the decoder has 3"):
        parse_attention("[True, False]", 3)
    with pytest.raises(LayerSpecError):
        parse_attention("__import__('os')", 3)


def test_model_config_with_code_is_refused_before_building():
    from helpers import make_dictionary
    from fconv_plugin.models import build_model_from_config

    cfg = {
        "_name": "fconv_ext",
        "encoder_layers": "__import__('os').system('echo pwned')",
        "max_source_positions": 8,
        "max_target_positions": 8,
    }
    with pytest.raises(LayerSpecError, match="--encoder-layers"):
        build_model_from_config(cfg, make_dictionary(10), make_dictionary(10))
