"""The tests' layout and its documentation stay in step: tests/README.md names every test file, every test
path the documentation names exists, docs/design.md names every folder of tests/unit, tests/unit holds no
slow test (``make test-fast`` runs it), and conftest files hold fixtures only (the helpers are in
tests/helpers.py, which no test reaches through conftest)."""

import ast
import os
import re
import subprocess

from helpers import REPO

TESTS = os.path.join(REPO, "tests")
#: a test path in a document: tests/unit/..., or unit/... and integration/... in tests/README.md;
#: optionally ::a_test_function
TEST_PATH = r"((?:unit|integration)/[\w/]*?test_\w+\.py)(?:::(\w+))?"


def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def all_test_files():
    """Every test module under tests/, relative to tests/."""
    found = []
    for folder, _, files in os.walk(TESTS):
        found += [os.path.relpath(os.path.join(folder, f), TESTS) for f in files if re.fullmatch(r"test_\w+\.py", f)]
    return sorted(found)


def documents():
    """The files git knows that may name a test: documentation, code, configuration, CI."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    return sorted(
        path
        for path in listed
        if os.path.isfile(os.path.join(REPO, path))
        and (path.endswith((".md", ".py", ".sh", ".cfg", ".toml")) or path in ("Makefile", ".ci/run"))
    )


def named_test_paths(text, prefix):
    """(path relative to tests/, test function or None) for each test path ``text`` names after ``prefix``."""
    return {(path, name or None) for path, name in re.findall(re.escape(prefix) + TEST_PATH, text)}


def test_the_tree_has_both_kinds_of_tests():
    files = all_test_files()
    assert any(f.startswith("unit" + os.sep) for f in files)
    assert any(f.startswith("integration" + os.sep) for f in files)
    assert all(f.startswith(("unit" + os.sep, "integration" + os.sep)) for f in files), files


def test_the_readme_names_every_test_file():
    named = {path for path, _ in named_test_paths(read("tests/README.md"), "`")}
    missing = [f for f in all_test_files() if f.replace(os.sep, "/") not in named]
    assert not missing, f"tests/README.md does not name: {missing}"


def test_every_test_path_a_file_names_exists():
    """Documentation, code, configuration and CI name test files that exist (and the test functions they
    name in them), never the flat tests/test_*.py layout of before."""
    wrong = []
    for document in documents():
        text = read(document)
        named = named_test_paths(text, "tests/")
        if document == "tests/README.md":
            named |= named_test_paths(text, "`")
        for path, function in sorted(named, key=str):
            file = os.path.join(TESTS, path)
            if not os.path.isfile(file):
                wrong.append(f"{document}: {path} does not exist")
            elif function and not re.search(rf"^def {function}\(", read(os.path.relpath(file, REPO)), re.M):
                wrong.append(f"{document}: {path} has no {function}")
        wrong += [f"{document}: {old}" for old in re.findall(r"\btests/test_\w+\.py", text)]
    assert documents() and not wrong, "\n".join(wrong)


def test_design_names_the_test_layout():
    text = read("docs/design.md")
    entry = re.search(r"^tests/unit/ .*\n(?: {20,}.*\n)*", text, re.M)
    assert entry and re.search(r"^tests/integration/ ", text, re.M) and re.search(r"^tests/helpers\.py ", text, re.M)
    folders = sorted(
        f
        for f in os.listdir(os.path.join(TESTS, "unit"))
        if os.path.isdir(os.path.join(TESTS, "unit", f)) and not f.startswith((".", "__"))
    )
    missing = [f for f in folders if f"{f}/" not in entry.group(0)]
    assert folders and not missing, f"docs/design.md's tests/unit/ entry does not name {missing}"
    for path in ("tests/helpers.py", "tests/conftest.py", "tests/integration/conftest.py"):
        assert path in text and os.path.isfile(os.path.join(REPO, path)), path


def test_no_unit_test_is_slow():
    """``make test-fast`` runs tests/unit: the slow tests (fairseq's CLIs, training) are in tests/integration."""
    slow = [
        f
        for f in all_test_files()
        if f.startswith("unit" + os.sep) and re.search(r"mark\.slow|^pytestmark", read(os.path.join("tests", f)), re.M)
    ]
    assert not slow, f"slow tests under tests/unit: {slow}"


def test_conftest_files_hold_fixtures_only_and_no_test_imports_them():
    conftests = [os.path.join(folder, "conftest.py") for folder, _, files in os.walk(TESTS) if "conftest.py" in files]
    assert len(conftests) >= 2
    for path in conftests:
        tree = ast.parse(read(os.path.relpath(path, REPO)))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                decorators = [ast.unparse(d) for d in getattr(node, "decorator_list", [])]
                assert node.name.startswith("pytest_") or any(d.startswith("pytest.fixture") for d in decorators), (
                    f"{path}: {node.name} is not a fixture (helpers go to tests/helpers.py)"
                )
            else:
                assert isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr)), f"{path}:{node.lineno}: not a fixture"
    importing = [
        f
        for f in all_test_files()
        if re.search(r"^\s*(from conftest |import conftest)", read(os.path.join("tests", f)), re.M)
    ]
    assert not importing, importing
