"""The benchmarks' layout: scripts in benchmarks/, committed results in benchmarks/results/.

Every results path the documentation names exists; no document points at a results file's old place
(``benchmarks/results_*``); no result file lies outside benchmarks/results/; benchmarks/README.md lists
every result; each result starts with the command that produced it and the machine it ran on."""

import glob
import re
import subprocess
from pathlib import Path

import pytest


def _repository():
    here = Path(__file__).resolve().parent
    while not ((here / "benchmarks").is_dir() and (here / "fconv_plugin").is_dir()):
        if here.parent == here:
            raise RuntimeError("no repository root above " + __file__)
        here = here.parent
    return here


REPO = _repository()
BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"
#: what benchmarks/ itself may hold: the scripts, their build recipe, the README, and results/
SCRIPT_SUFFIXES = {".py", ".sh", ".pyxbld"}
#: a path under benchmarks/results/ as the documents write it (``*`` for a glob, a trailing ``/`` for a folder)
RESULTS_PATH = re.compile(r"benchmarks/(results/[A-Za-z0-9_.*/-]*)")
#: the same, relative to benchmarks/ (benchmarks/README.md's links)
RELATIVE_RESULTS_PATH = re.compile(r"(?<![\w/.])(results/[A-Za-z0-9_.*/-]*)")
#: a results file where it lay before the move
OLD_RESULTS_PATH = re.compile(r"benchmarks/results_[A-Za-z0-9_-]+\.(?:md|json|txt)|\]\(results_[A-Za-z0-9_-]+\.")


def documents():
    """README.md, docs/, examples/ (markdown and shell scripts) and benchmarks/README.md."""
    paths = [REPO / "README.md", BENCHMARKS / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    paths += sorted(p for p in (REPO / "examples").rglob("*") if p.suffix in (".md", ".sh") and p.is_file())
    return paths


def result_files():
    """Every committed result (markdown, JSON, text, log) under benchmarks/results/."""
    return sorted(p for p in RESULTS.rglob("*") if p.is_file())


def _exists(relative):
    """Whether ``relative`` (under benchmarks/: a file, a folder, a glob, or an output prefix such as
    ``--out benchmarks/results/decode``) names something that exists."""
    relative = relative.rstrip(".,;:")
    if "*" in relative:
        return bool(glob.glob(str(BENCHMARKS / relative)))
    if "." not in relative.rsplit("/", 1)[-1] and not relative.endswith("/"):
        return bool(glob.glob(str(BENCHMARKS / relative) + ".*"))  # OUT.json, OUT.md
    return (BENCHMARKS / relative).exists()


def referenced_results(path):
    """The results paths ``path`` names, relative to benchmarks/."""
    text = path.read_text(encoding="utf-8")
    found = set(RESULTS_PATH.findall(text))
    if path == BENCHMARKS / "README.md":
        found |= set(RELATIVE_RESULTS_PATH.findall(text))
    return sorted(found)


def test_the_documents_name_results_that_exist():
    named = {doc.relative_to(REPO).as_posix(): referenced_results(doc) for doc in documents()}
    assert sum(map(len, named.values())) >= 20  # the scan finds the links (README, docs, benchmarks/README)
    missing = {doc: [p for p in paths if not _exists(p)] for doc, paths in named.items()}
    assert not {doc: paths for doc, paths in missing.items() if paths}


def test_no_document_or_script_names_a_results_file_where_it_used_to_be():
    scripts = sorted(p for p in BENCHMARKS.iterdir() if p.suffix in SCRIPT_SUFFIXES)
    assert scripts
    stale = {
        path.relative_to(REPO).as_posix(): OLD_RESULTS_PATH.findall(path.read_text(encoding="utf-8"))
        for path in documents() + scripts
    }
    assert not {path: found for path, found in stale.items() if found}


def test_no_result_file_outside_benchmarks_results():
    strays = [
        p.name
        for p in BENCHMARKS.iterdir()
        if not p.name.startswith((".", "__pycache__"))
        and not (p.is_file() and (p.suffix in SCRIPT_SUFFIXES or p.name == "README.md"))
        and p != RESULTS
    ]
    assert not strays, f"benchmarks/ holds more than scripts, README.md and results/: {strays}"
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: only benchmarks/ itself was checked")
    results_named = [
        f
        for f in tracked.splitlines()
        if re.fullmatch(r"results.*\.(md|json|txt|log)", f.rsplit("/", 1)[-1])
        and not f.startswith("benchmarks/results/")
    ]
    assert not results_named, f"result files outside benchmarks/results/: {results_named}"


def test_benchmarks_readme_lists_every_result():
    text = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
    listed = set(RELATIVE_RESULTS_PATH.findall(text))
    unlisted = []
    for path in result_files():
        if path.suffix not in (".md", ".txt"):
            continue  # a JSON or log file goes with the markdown of the same run
        relative = path.relative_to(BENCHMARKS)
        # a file in a sub-folder of results/ may be listed through its folder (results/gpu_runs/)
        folders = {f"{parent.as_posix()}/" for parent in relative.parents if parent not in (Path("."), Path("results"))}
        if relative.as_posix() not in listed and not folders & listed:
            unlisted.append(relative.as_posix())
    assert len(result_files()) >= 20 and not unlisted, f"results not listed in benchmarks/README.md: {unlisted}"


@pytest.mark.parametrize(
    "result", [p.relative_to(RESULTS).as_posix() for p in result_files() if p.suffix in (".md", ".txt")]
)
def test_each_result_starts_with_its_command_and_machine(result):
    top = "\n".join((RESULTS / result).read_text(encoding="utf-8").splitlines()[:20])
    assert re.search(r"Command|benchmarks/[a-z_0-9]+\.(py|sh)", top), f"{result}: no command at the top"
    assert re.search(r"Machine|CPU|lscpu|EPYC|Xeon|H200", top), f"{result}: no machine at the top"
    assert re.search(r"flags|AVX|avx|NVIDIA|CUDA", top), f"{result}: no CPU flags (or GPU) at the top"
