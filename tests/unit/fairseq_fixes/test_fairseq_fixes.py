"""What importing the plugin changes in fairseq and torch (fconv_plugin.fairseq_fixes):
each change against fairseq's own function (the wrapper's ``__wrapped__``) on inputs
fairseq accepts, so that importing the plugin never breaks what worked without it; each
off switch in a fresh process; and README.md's table is the module's."""

import argparse
import io
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.data import data_utils
from fairseq.sequence_generator import SequenceGenerator, SequenceGeneratorWithAlignment
from fairseq.sequence_scorer import SequenceScorer
from fairseq.tasks.fairseq_task import FairseqTask
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from helpers import REPO, build_twins, fconv_args, make_dictionary
from fconv_plugin import fairseq_fixes
from fconv_plugin.serving.beam_search import FConvBeamSearch, FConvBeamSearchWithAlignment
from fconv_plugin.checkpoint import CheckpointError, load_checkpoint_file
from fconv_plugin.models import build_model_from_config

TINY_FCONV = dict(
    encoder_embed_dim=16,
    decoder_embed_dim=16,
    decoder_out_embed_dim=16,
    encoder_layers="[(16, 3)] * 2",
    decoder_layers="[(16, 3)] * 2",
)
TINY_EXT = {
    "_name": "fconv_ext",
    "encoder_embed_dim": 16,
    "decoder_embed_dim": 16,
    "decoder_out_embed_dim": 16,
    "encoder_layers": "[(16, 3)] * 2",
    "decoder_layers": "[(16, 3)] * 2",
    "dropout": 0.1,
    "max_source_positions": 64,
    "max_target_positions": 64,
}


def _save_fairseq_checkpoint(path, cfg, weights):
    """What fairseq-train writes, as far as fairseq's loader needs it."""
    torch.save(
        {
            "args": None,
            "cfg": cfg,
            "model": weights,
            "extra_state": {},
            "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "best_loss": None}],
        },
        path,
    )


# --- the registry and README.md ---------------------------------------------------------


def test_readme_table_is_the_modules_table():
    """README.md's "What importing the plugin changes" holds `python -m fconv_plugin.fairseq_fixes`'s table."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = re.search(r"^## What importing the plugin changes\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README.md has no section '## What importing the plugin changes'"
    table = "\n".join(line for line in section.group(1).splitlines() if line.startswith("|"))
    assert table == fairseq_fixes.markdown_table(), "run `python -m fconv_plugin.fairseq_fixes` and paste its table"


def test_docs_full_table_is_the_modules_full_table():
    """docs/fairseq-fixes.md holds `python -m fconv_plugin.fairseq_fixes --full`'s table (links relative to docs/)."""
    with open(os.path.join(REPO, "docs", "fairseq-fixes.md"), encoding="utf-8") as f:
        table = "\n".join(line for line in f.read().splitlines() if line.startswith("|"))
    expected = fairseq_fixes.markdown_table(full=True).replace("](docs/upstream-problems.md", "](upstream-problems.md")
    assert table == expected, "run `python -m fconv_plugin.fairseq_fixes --full` and paste its table"
    assert len(table.splitlines()) == len(fairseq_fixes.FIXES) + 2


def test_printed_table_is_the_modules_table():
    out = subprocess.run(
        [sys.executable, "-m", "fconv_plugin.fairseq_fixes"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == fairseq_fixes.markdown_table()
    assert "RuntimeWarning" not in out.stderr


def test_every_fix_says_what_why_where_and_how_to_turn_it_off():
    names = [fix.name for fix in fairseq_fixes.FIXES]
    assert names == [
        "safe_globals",
        "checkpoint_errors",
        "interactive_input",
        "keep_last_batch",
        "beam_search",
        "torchrun",
        "resume_broadcast",
    ]
    for fix in fairseq_fixes.FIXES:
        assert fix.changes and fix.upstream and fix.scope and fix.switch == f"FCONV_EXT_NO_{fix.name.upper()}"
    by_name = {fix.name: fix for fix in fairseq_fixes.FIXES}
    assert "#5036" in by_name["keep_last_batch"].upstream and "process-wide" in by_name["keep_last_batch"].scope
    assert "#5610" in by_name["safe_globals"].upstream
    assert "`FCONV_EXT_BEAM_SEARCH=fairseq`" in by_name["beam_search"].how_to_turn_off()


def test_switch_values():
    fix = fairseq_fixes._fix("keep_last_batch")
    for value in ("1", "yes", "true", "anything"):
        assert fix.disabled({"FCONV_EXT_NO_KEEP_LAST_BATCH": value})
        assert fix.disabled({"FCONV_EXT_NO_FIXES": value})
    for value in ("", "0", "false", "No", "off"):
        assert not fix.disabled({"FCONV_EXT_NO_KEEP_LAST_BATCH": value, "FCONV_EXT_NO_FIXES": value})
    assert not fix.disabled({"FCONV_EXT_NO_BEAM_SEARCH": "1", "FCONV_EXT_BEAM_SEARCH": "fairseq"})
    beam = fairseq_fixes._fix("beam_search")
    assert beam.disabled({"FCONV_EXT_BEAM_SEARCH": "fairseq"}) and not beam.disabled({"FCONV_EXT_BEAM_SEARCH": ""})


def test_installed_once_and_idempotent():
    wrapped = [checkpoint_utils.load_checkpoint_to_cpu, data_utils.batch_by_size, FairseqTask.build_generator]
    for function in wrapped:
        assert callable(function.__wrapped__) and not hasattr(function.__wrapped__, "_fconv_ext_fix")
    fairseq_fixes.install_all()
    assert [checkpoint_utils.load_checkpoint_to_cpu, data_utils.batch_by_size, FairseqTask.build_generator] == wrapped
    assert torch.serialization.get_safe_globals().count(argparse.Namespace) == 1


# --- interactive_input: fairseq-interactive's reader ----------------------------------


@pytest.fixture
def interactive():
    """fairseq_cli.interactive with the plugin's reader, and fairseq's own reader."""
    from fairseq_cli import interactive as module

    fairseq_fixes.install_all()  # now that fairseq_cli.interactive is loaded, as under fairseq-interactive
    assert module.buffered_read._fconv_ext_fix == "interactive_input"
    return module, module.buffered_read.__wrapped__


TEXTS = ["a b\n  c \n\nd", "x\r\ny\n", "one\rtwo\nthree\n", "\u2028 z \x0c\n\u00e4\u00f6\n", "", "single", "\n\n\n"]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("buffer_size", [0, 1, 2, 3])
def test_text_stdin_gives_fairseqs_buffers(interactive, monkeypatch, text, buffer_size):
    """sys.stdin = io.StringIO(...) (code calling fairseq_cli.interactive.main): read as fairseq reads it."""
    module, fairseq_read = interactive
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    expected = list(fairseq_read("-", buffer_size))
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert list(module.buffered_read("-", buffer_size)) == expected


def _stdin(data: bytes, errors="strict", newline="\n"):
    """A standard input like Python's own on POSIX (universal newlines off, as there)."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors=errors, newline=newline)


@pytest.mark.parametrize("text", TEXTS)
def test_process_stdin_gives_fairseqs_buffers(interactive, monkeypatch, text):
    module, fairseq_read = interactive
    data = text.encode("utf-8")
    for stdin_is_the_process_stdin in (True, False):
        monkeypatch.setattr(sys, "stdin", _stdin(data))
        expected = list(fairseq_read("-", 2))
        monkeypatch.setattr(sys, "stdin", _stdin(data))
        if stdin_is_the_process_stdin:
            monkeypatch.setattr(sys, "__stdin__", sys.stdin)
        assert list(module.buffered_read("-", 2)) == expected


def test_undecodable_stdin_bytes_become_replacement_characters(interactive, monkeypatch, caplog):
    module, fairseq_read = interactive
    data = b"good\nbad \xff\xfe here\nlast \xc3\xa4\n"
    monkeypatch.setattr(sys, "stdin", _stdin(data))
    with pytest.raises(UnicodeDecodeError):  # fairseq: nothing translated
        list(fairseq_read("-", 10))
    monkeypatch.setattr(sys, "stdin", _stdin(data))
    monkeypatch.setattr(sys, "__stdin__", sys.stdin)
    with caplog.at_level(logging.WARNING, logger="fconv_plugin.interactive"):
        assert list(module.buffered_read("-", 2)) == [["good", "bad \ufffd\ufffd here"], ["last \u00e4"]]
    assert "stdin line 2: bytes that are not utf-8 were replaced by U+FFFD" in caplog.text


def test_stdin_that_tolerates_bad_bytes_is_read_as_fairseq_reads_it(interactive, monkeypatch):
    """Under the C locale Python's stdin decodes with surrogateescape: fairseq does not stop, so nothing changes."""
    module, fairseq_read = interactive
    data = b"caf\xe9\n"
    monkeypatch.setattr(sys, "stdin", _stdin(data, errors="surrogateescape"))
    expected = list(fairseq_read("-", 1))
    monkeypatch.setattr(sys, "stdin", _stdin(data, errors="surrogateescape"))
    monkeypatch.setattr(sys, "__stdin__", sys.stdin)
    assert list(module.buffered_read("-", 1)) == expected == [["caf\udce9"]]


@pytest.mark.parametrize("data", [t.encode("utf-8") for t in TEXTS] + [b"\xef\xbb\xbfbom\r\nmixed\rends\n"])
def test_file_input_gives_fairseqs_buffers(interactive, tmp_path, data):
    module, fairseq_read = interactive
    path = tmp_path / "input.txt"
    path.write_bytes(data)
    for buffer_size in (1, 2, 5):
        assert list(module.buffered_read(str(path), buffer_size)) == list(fairseq_read(str(path), buffer_size))


def test_undecodable_file_bytes_become_replacement_characters(interactive, tmp_path, caplog):
    module, fairseq_read = interactive
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok\r\nCaf\u00e9 cr\u00e8me\rend\n".encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):
        list(fairseq_read(str(path), 10))
    with caplog.at_level(logging.WARNING, logger="fconv_plugin.interactive"):
        assert list(module.buffered_read(str(path), 10)) == [["ok", "Caf\ufffd cr\ufffdme", "end"]]
    assert f"{path} line 2: bytes that are not utf-8 were replaced by U+FFFD" in caplog.text


def test_real_stdin_of_a_fairseq_interactive_process(tmp_path):
    """The process's own stdin, strict UTF-8 (a UTF-8 locale), bytes through a pipe."""
    script = (
        "import json, fairseq_cli.interactive as i, fconv_plugin\nprint(json.dumps(list(i.buffered_read('-', 2))))\n"
    )
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    out = subprocess.run(
        [sys.executable, "-c", script], input=b"a\n b\xff \nc\r\n", capture_output=True, env=env, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout) == [["a", "b\ufffd"], ["c"]]
    assert b"stdin line 2: bytes that are not utf-8 were replaced" in out.stderr


def test_interactive_main_with_a_text_stream_as_stdin(interactive, tmp_path, monkeypatch, capsys):
    """The reported case: fairseq_cli.interactive.main called from Python with sys.stdin an
    io.StringIO, plugin imported: the same output as with fairseq's own reader (in this
    process, about a second: not marked slow)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    module, fairseq_read = interactive
    src_dict, tgt_dict = make_dictionary(40), make_dictionary(40)
    src_dict.save(str(tmp_path / "dict.en.txt"))
    tgt_dict.save(str(tmp_path / "dict.de.txt"))
    torch.manual_seed(0)
    model = build_model_from_config(TINY_EXT, src_dict, tgt_dict)
    task_cfg = {"_name": "translation", "data": str(tmp_path), "source_lang": "en", "target_lang": "de"}
    _save_fairseq_checkpoint(tmp_path / "model.pt", {"model": TINY_EXT, "task": task_cfg}, model.state_dict())
    parser = options.get_interactive_generation_parser()
    args = options.parse_args_and_arch(
        parser,
        [
            str(tmp_path),
            "--path",
            str(tmp_path / "model.pt"),
            "--beam",
            "2",
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "--cpu",
            "--buffer-size",
            "2",
            "--max-len-b",
            "5",
            "--user-dir",
            os.path.join(REPO, "fconv_plugin"),
        ],
    )
    text = "w1 w2 w3\n  w4  \n\nw5 w6\n"

    def run(reader):
        monkeypatch.setattr(module, "buffered_read", reader)
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        capsys.readouterr()
        module.main(convert_namespace_to_omegaconf(args))
        return [line for line in capsys.readouterr().out.splitlines() if line[:2] in ("S-", "H-", "P-")]

    ours = run(module.buffered_read)
    assert ours == run(fairseq_read)
    assert [line.split("\t")[0] for line in ours if line.startswith("S-")] == ["S-0", "S-1", "S-2", "S-3"]


# --- keep_last_batch: fairseq's batches plus the dropped tail --------------------------


def _cases():
    rng = np.random.RandomState(0)
    for case in range(60):
        n = int(rng.randint(1, 120))
        sizes = rng.randint(1, 40, n).astype(np.int64)
        indices = rng.permutation(n).astype(np.int64)
        yield (
            case,
            indices,
            sizes,
            dict(
                max_tokens=[None, 100, 300][case % 3],
                max_sentences=[None, 4, 16][(case // 3) % 3],
                required_batch_size_multiple=[1, 2, 8][(case // 9) % 3],
            ),
        )


@pytest.mark.parametrize("use_vec", [True, False])
def test_batches_are_fairseqs_plus_the_dropped_tail(use_vec):
    fairseq_batch_by_size = data_utils.batch_by_size.__wrapped__
    for case, indices, sizes, options in _cases():
        vec = sizes if use_vec else None
        ours = data_utils.batch_by_size(indices, lambda i: sizes[i], num_tokens_vec=vec, **options)
        theirs = fairseq_batch_by_size(indices, lambda i: sizes[i], num_tokens_vec=vec, **options)
        assert len(ours) in (len(theirs), len(theirs) + 1), case
        for a, b in zip(ours, theirs):
            assert np.array_equal(a, b), case
        covered = sum(len(b) for b in theirs)
        if options["required_batch_size_multiple"] == 1:
            assert len(ours) == len(theirs), case
        if len(ours) > len(theirs):
            assert np.array_equal(ours[-1], indices[covered:]) and covered < len(indices), case
        assert sorted(np.concatenate(ours).tolist()) == list(range(len(indices))), case


def test_fixed_shapes_and_generators_as_fairseq():
    fairseq_batch_by_size = data_utils.batch_by_size.__wrapped__
    sizes = np.random.RandomState(1).randint(1, 50, 30)
    for shapes in ([(4, 60), (8, 30), (2, 100)], [(1, 100)]):
        ours = data_utils.batch_by_size(np.arange(30), lambda i: sizes[i], fixed_shapes=shapes)
        theirs = fairseq_batch_by_size(np.arange(30), lambda i: sizes[i], fixed_shapes=shapes)
        assert [np.asarray(b).tolist() for b in ours] == [np.asarray(b).tolist() for b in theirs]
    # indices as a generator (read once) and as a list
    ours = data_utils.batch_by_size(
        (i for i in range(13)), None, num_tokens_vec=np.full(13, 5), max_sentences=4, required_batch_size_multiple=8
    )
    assert [b.tolist() for b in ours] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]
    theirs = fairseq_batch_by_size(
        list(range(13)), None, num_tokens_vec=np.full(13, 5), max_sentences=4, required_batch_size_multiple=8
    )
    assert [b.tolist() for b in theirs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_what_fairseq_refuses_is_refused_the_same_way():
    fairseq_batch_by_size = data_utils.batch_by_size.__wrapped__
    for call in (
        lambda f: f(np.arange(0), None, num_tokens_vec=np.zeros(0, np.int64), required_batch_size_multiple=8),
        lambda f: f(np.arange(3), None, num_tokens_vec=np.array([5, 50, 5]), max_tokens=10),
    ):
        with pytest.raises(Exception) as theirs:
            call(fairseq_batch_by_size)
        with pytest.raises(type(theirs.value)):
            call(data_utils.batch_by_size)


# --- checkpoint_errors and safe_globals: fairseq's checkpoint loading -------------------


def _damaged(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.randn(1000)}, "args": None, "optimizer_history": []}, good)
    data = good.read_bytes()
    return {"truncated": data[: len(data) // 2], "empty": b"", "not a checkpoint": b"not a checkpoint"}


def test_unreadable_checkpoint_error_is_also_the_error_fairseq_raises(tmp_path):
    fairseq_load = checkpoint_utils.load_checkpoint_to_cpu.__wrapped__
    for kind, data in _damaged(tmp_path).items():
        path = tmp_path / "checkpoint_last.pt"
        path.write_bytes(data)
        with pytest.raises(Exception) as theirs:
            fairseq_load(str(path))
        with pytest.raises(CheckpointError, match="checkpoint_last.pt.*truncated or corrupt") as ours:
            checkpoint_utils.load_checkpoint_to_cpu(str(path))
        assert isinstance(ours.value, type(theirs.value)), kind  # code catching fairseq's error still catches it
        assert "not plain data" not in str(ours.value), kind


def test_readable_checkpoints_and_other_errors_as_fairseq(tmp_path):
    fairseq_load = checkpoint_utils.load_checkpoint_to_cpu.__wrapped__
    ref, _, _, _ = build_twins("fconv_iwslt_de_en", **TINY_FCONV)
    path = tmp_path / "fconv.pt"  # fairseq's fconv: config as an argparse.Namespace (safe_globals)
    _save_fairseq_checkpoint(path, {"model": fconv_args("fconv_iwslt_de_en", **TINY_FCONV)}, ref.state_dict())
    ours, theirs = checkpoint_utils.load_checkpoint_to_cpu(str(path)), fairseq_load(str(path))
    assert ours["cfg"]["model"] == theirs["cfg"]["model"]
    assert all(torch.equal(ours["model"][k], v) for k, v in theirs["model"].items())
    with pytest.raises(FileNotFoundError):  # not an unreadable file: fairseq's own error
        checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "missing.pt"))


def test_converter_reading_does_not_leave_the_allow_list_changed(tmp_path):
    """load_checkpoint_file allows argparse.Namespace while it reads; with the safe_globals
    fix switched off it is not on torch's list afterwards."""
    ref, _, _, _ = build_twins("fconv_iwslt_de_en", **TINY_FCONV)
    path = tmp_path / "fconv.pt"
    _save_fairseq_checkpoint(path, {"model": fconv_args("fconv_iwslt_de_en", **TINY_FCONV)}, ref.state_dict())
    saved = torch.serialization.get_safe_globals()
    try:
        torch.serialization.clear_safe_globals()  # as with FCONV_EXT_NO_SAFE_GLOBALS=1
        assert isinstance(load_checkpoint_file(str(path))["cfg"]["model"], argparse.Namespace)
        assert argparse.Namespace not in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


# --- beam_search: other models and tasks in the same process ----------------------------


def test_other_models_get_fairseqs_generator():
    fairseq_build = FairseqTask.build_generator.__wrapped__
    ref, ext, src_dict, tgt_dict = build_twins("fconv_iwslt_de_en", **TINY_FCONV)
    task = TranslationTask(TranslationConfig(), src_dict, tgt_dict)
    plain, aligned = argparse.Namespace(beam=3), argparse.Namespace(beam=3, print_alignment="hard")
    for args in (plain, aligned):
        ours, theirs = task.build_generator([ref], args), fairseq_build(task, [ref], args)
        assert type(ours) is type(theirs) and type(ours) in (SequenceGenerator, SequenceGeneratorWithAlignment)
        assert vars(ours).keys() == vars(theirs).keys() and ours.beam_size == theirs.beam_size == 3
    assert type(task.build_generator([ref, ext], plain)) is SequenceGenerator  # an ensemble with fconv
    assert type(task.build_generator([ext], argparse.Namespace(score_reference=True))) is SequenceScorer
    assert type(task.build_generator([ext], plain, seq_gen_cls=SequenceGenerator)) is SequenceGenerator
    # fconv_ext models: the plugin's generator
    assert type(task.build_generator([ext], plain)) is FConvBeamSearch
    assert type(task.build_generator([ext], aligned)) is FConvBeamSearchWithAlignment


# --- each switch in a fresh process -------------------------------------------------------

PROBE = r"""
import argparse, json, os, sys, tempfile, traceback
import numpy as np, torch
import fairseq_cli.interactive as interactive  # fairseq first, then the plugin, as under fairseq-interactive
from fairseq import checkpoint_utils
from fairseq.data import data_utils
from fairseq.tasks.translation import TranslationConfig, TranslationTask


def changes_in_effect(model_cfg):
    import fconv_plugin
    from fconv_plugin.models import build_model_from_config
    from helpers import make_dictionary  # (it imports the plugin: only now)

    on = {"safe_globals": argparse.Namespace in torch.serialization.get_safe_globals()}
    tmp = tempfile.mkdtemp()
    damaged = os.path.join(tmp, "checkpoint_last.pt")
    open(damaged, "wb").close()
    try:
        checkpoint_utils.load_checkpoint_to_cpu(damaged)
    except Exception as err:
        on["checkpoint_errors"] = type(err).__name__ == "CheckpointError"
    latin1 = os.path.join(tmp, "input.txt")
    with open(latin1, "wb") as f:
        f.write(b"caf\xe9\n")
    try:
        on["interactive_input"] = list(interactive.buffered_read(latin1, 1)) == [["caf\ufffd"]]
    except UnicodeDecodeError:
        on["interactive_input"] = False
    batches = data_utils.batch_by_size(np.arange(13), None, num_tokens_vec=np.full(13, 5), max_sentences=4,
                                       required_batch_size_multiple=8)
    on["keep_last_batch"] = sum(len(b) for b in batches) == 13
    d = make_dictionary(20)
    model = build_model_from_config(model_cfg, d, d)
    generator = TranslationTask(TranslationConfig(), d, d).build_generator([model], argparse.Namespace(beam=2))
    on["beam_search"] = type(generator).__name__ == "FConvBeamSearch"
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils
    args = options.parse_args_and_arch(options.get_training_parser(), ["data", "--arch", "fconv_ext_tiny", "--cpu",
                                                                       "--distributed-world-size", "2"])
    try:  # fairseq: an AssertionError about GPUs; the plugin: the torchrun command to run instead
        distributed_utils.call_main(convert_namespace_to_omegaconf(args), print)
    except Exception as err:
        on["torchrun"] = type(err).__name__ == "DistributedSetupError"
    receiver = distributed_utils._broadcast_object_slow  # needs two ranks to run: the installed wrapper
    on["resume_broadcast"] = getattr(receiver, "_fconv_ext_fix", None) == "resume_broadcast"
    return on


# one fresh process per setting: a child forked before the plugin is imported (fairseq and
# torch, the slow imports, are loaded once), the variables set, then the plugin imported
results = {}
for label, env in json.loads(sys.argv[1]).items():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            os.environ.update(env)
            answer = changes_in_effect(json.loads(sys.argv[2]))
        except BaseException:
            answer, code = {"error": traceback.format_exc()}, 1
        with os.fdopen(write, "w") as f:
            f.write(json.dumps(answer))
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        results[label] = json.loads(f.read())
    os.waitpid(pid, 0)
print(json.dumps(results))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the probe forks one process per setting")
def test_each_switch_turns_off_its_change_and_only_that():
    names = [fix.name for fix in fairseq_fixes.FIXES]
    settings = {
        f"FCONV_EXT_NO_{name.upper()}=1": ({f"FCONV_EXT_NO_{name.upper()}": "1"}, {n: n != name for n in names})
        for name in names
    }
    settings["FCONV_EXT_BEAM_SEARCH=fairseq"] = (
        {"FCONV_EXT_BEAM_SEARCH": "fairseq"},
        {n: n != "beam_search" for n in names},
    )
    settings["FCONV_EXT_NO_FIXES=1"] = ({"FCONV_EXT_NO_FIXES": "1"}, {n: False for n in names})
    settings["FCONV_EXT_NO_FIXES=0"] = ({"FCONV_EXT_NO_FIXES": "0"}, {n: True for n in names})
    settings["no switch"] = ({}, {n: True for n in names})
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCONV_EXT_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps({k: e for k, (e, _) in settings.items()}), json.dumps(TINY_EXT)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for label, (_, expected) in settings.items():
        assert results[label] == expected, f"{label}: {results[label]}"
