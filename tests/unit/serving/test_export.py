"""fconv-ext-export and fconv_runtime: the exported graphs compute what the eager modules compute, at
several batch / beam / source sizes from one export (dynamic shapes); the runtime's hypotheses are
fairseq's beam search's; the ONNX runtime runs where torch and fairseq cannot be imported; unusable
exports are refused with a message that says what to do."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, SELF_ATT_BASE_SMALL, random_batch, save_checkpoint

from fconv_plugin.serving.beam_search import FConvBeamSearch
from fconv_plugin.serving.export import (
    ExportError,
    export,
    load_model,
    sample_inputs,
    serving_modules,
)
from fconv_runtime import ArtifactError, Translator
from fconv_runtime.artifact import MANIFEST, load_manifest, sha256_of


def copy_of(directory, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    return target


def rewrite_manifest(directory, edit):
    """Apply ``edit`` to the manifest (and refresh the checksums it lists)."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest["files"] = {name: sha256_of(str(directory / name)) for name in manifest["files"]}
    path.write_text(json.dumps(manifest))


# ------------------------------------------------------------------------------- graphs == eager


@pytest.mark.parametrize("sentences,beams,source", [(1, 1, 1), (2, 5, 9), (7, 3, 4), (4, 11, 30)])
def test_onnx_graphs_equal_eager_modules_at_any_size(onnx_export, sentences, beams, source):
    import onnxruntime

    checkpoint, out = onnx_export
    model, _, _, _ = load_model(str(checkpoint))
    encoder, step = serving_modules(model)
    (src,), step_inputs = sample_inputs(encoder, step, sentences, beams, source, seed=sentences + beams)
    manifest = load_manifest(str(out))
    enc_session = onnxruntime.InferenceSession(str(out / "encoder.onnx"))
    step_session = onnxruntime.InferenceSession(str(out / "step.onnx"))

    with torch.no_grad():
        expected = encoder(src)
    got = enc_session.run(None, {"src_tokens": src.numpy()})
    for name, e, g in zip(manifest["encoder"]["outputs"], expected, got):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-5, rtol=0, err_msg=name)

    with torch.no_grad():
        expected = step(*step_inputs)
    feed = {name: x.numpy() for name, x in zip(manifest["step"]["inputs"], step_inputs)}
    got = step_session.run(None, feed)
    for name, e, g in zip(manifest["step"]["outputs"], expected, got):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-5, rtol=0, err_msg=name)


def test_onnx_int8_graphs_run_close_to_float(onnx_export, tmp_path):
    """--int8's ONNX path (onnxruntime's dynamic quantization of the float graphs): int8 products in
    the graphs, the runtime decodes with them, and the step's scores stay near the float graph's."""
    import onnx
    import onnxruntime

    from fconv_plugin.serving.export import quantize_onnx

    copy = copy_of(onnx_export[1], tmp_path)
    for name in ("encoder.onnx", "step.onnx"):
        quantize_onnx(str(copy / name))
        assert "DynamicQuantizeLinear" in {node.op_type for node in onnx.load(str(copy / name)).graph.node}
    rewrite_manifest(copy, lambda m: m.update(int8=True))
    model, _, _, _ = load_model(str(onnx_export[0]))
    _, step_inputs = sample_inputs(*serving_modules(model), 4, 3, 8)
    feed = {name: x.numpy() for name, x in zip(load_manifest(str(copy))["step"]["inputs"], step_inputs)}
    float_scores = onnxruntime.InferenceSession(str(onnx_export[1] / "step.onnx")).run(["next_scores"], feed)[0]
    int8_scores = onnxruntime.InferenceSession(str(copy / "step.onnx")).run(["next_scores"], feed)[0]
    np.testing.assert_allclose(int8_scores, float_scores, atol=0.1)
    assert len(Translator(str(copy)).translate(["w1 w2 w3", "w4"], beam=3)) == 2


# ------------------------------------------------------------------------------- search == fairseq's


def fairseq_nbest(model, src_dict, tgt_dict, src_tokens, beam, **options):
    """FConvBeamSearch's finished hypotheses (tokens without EOS, score) per sentence."""
    sample = {"net_input": {"src_tokens": src_tokens, "src_lengths": src_tokens.ne(src_dict.pad()).sum(1)}}
    with torch.no_grad():
        out = FConvBeamSearch([model], tgt_dict, beam_size=beam, **options).generate([model], sample)
    return [[(h["tokens"][:-1].tolist(), float(h["score"])) for h in hyps] for hyps in out]


@pytest.mark.parametrize(
    "beam,lengths,options",
    [
        (5, (7, 3, 9, 5, 1, 8), {}),
        (1, (7, 3, 9, 5), {}),
        (3, (6, 2, 11), {"lenpen": 0.6, "max_len_b": 6}),
    ],
)
def test_runtime_hypotheses_equal_fconv_beam_search(search_model, onnx_export, beam, lengths, options):
    model, src_dict, tgt_dict = search_model
    src_tokens = random_batch(src_dict, list(lengths), seed=len(lengths) + beam)
    sequence_options = {{"lenpen": "len_penalty"}.get(k, k): v for k, v in options.items()}
    expected = fairseq_nbest(model, src_dict, tgt_dict, src_tokens, beam, **sequence_options)

    translator = Translator(str(onnx_export[1]))
    from fconv_runtime.search import beam_search

    got = beam_search(translator.backend, src_tokens.numpy(), beam, translator.max_target_positions, **options)
    assert [[tokens for _, tokens in hyps] for hyps in got] == [[tokens for tokens, _ in hyps] for hyps in expected]
    for got_hyps, expected_hyps in zip(got, expected):
        np.testing.assert_allclose([s for s, _ in got_hyps], [s for _, s in expected_hyps], atol=1e-4)


def test_shortlist_export_hypotheses_equal_fconv_beam_search_with_the_shortlist(search_model, tmp_path):
    """--shortlist: the step scores each batch's candidate words only (the rows of fc3 gathered in the
    graph); the hypotheses are FConvBeamSearch's for the model decoding with the same shortlist file."""
    import copy

    from fconv_plugin.serving.shortlist import dictionary_record, save

    model, src_dict, tgt_dict = search_model
    rng = np.random.default_rng(0)
    table = rng.integers(tgt_dict.nspecial, len(tgt_dict), size=(len(src_dict), 2))
    table[: src_dict.nspecial] = -1
    header = {
        "source": dictionary_record(src_dict, "en"),
        "target": dictionary_record(tgt_dict, "de"),
        "n_best": 2,
        "n_frequent": 3,
    }
    shortlist = tmp_path / "shortlist.npz"
    save(str(shortlist), table, np.ones(table.shape), rng.integers(1, 100, size=len(tgt_dict)), header)
    checkpoint = save_checkpoint(tmp_path / "ckpt", model, src_dict, tgt_dict)
    out = tmp_path / "out"
    export(str(checkpoint), str(out), "onnx", shortlist=str(shortlist))

    translator = Translator(str(out))
    shortlisted = copy.deepcopy(model)  # weight norm live: FConvBeamSearch decodes through fairseq's interface
    shortlisted.shortlist_path = str(shortlist)
    from fconv_runtime.search import beam_search

    restricted = []
    for beam, lengths in [(3, (7, 3, 9, 5)), (2, (2, 6))]:
        src_tokens = random_batch(src_dict, list(lengths), seed=beam)
        words = translator.batch_words(src_tokens.numpy(), beam)
        assert len(words) < len(tgt_dict)
        expected = fairseq_nbest(shortlisted, src_dict, tgt_dict, src_tokens, beam)
        restricted.append(expected != fairseq_nbest(model, src_dict, tgt_dict, src_tokens, beam))
        got = beam_search(translator.backend, src_tokens.numpy(), beam, translator.max_target_positions, words=words)
        assert [[t for _, t in hyps] for hyps in got] == [[t for t, _ in hyps] for hyps in expected]
        np.testing.assert_allclose(
            [s for hyps in got for s, _ in hyps], [s for hyps in expected for _, s in hyps], atol=1e-4
        )
    assert any(restricted)  # the shortlist changed what fairseq's search finds: it was in force


def test_translator_keeps_order_and_empty_lines(search_model, onnx_export):
    _, src_dict, _ = search_model
    translator = Translator(str(onnx_export[1]))
    words = [src_dict[i] for i in range(src_dict.nspecial, len(src_dict))]
    lines = [" ".join(words[:5]), "", " ".join(words[3:6]), " ".join(words[:9]), "   ", words[2]]
    batched = translator.translate(lines, beam=3, batch_size=2)
    alone = [translator.translate([line], beam=3)[0] for line in lines]
    assert batched == alone
    assert batched[1] == batched[4] == ""
    nbest = translator.translate_nbest(lines, beam=3, nbest=3)
    assert [hyps[0].text if hyps else "" for hyps in nbest] == batched
    assert all(len(hyps) == 3 for i, hyps in enumerate(nbest) if lines[i].strip())


def test_too_long_sentence_is_truncated_with_a_warning(search_model, onnx_export, caplog):
    _, src_dict, _ = search_model
    translator = Translator(str(onnx_export[1]))
    line = " ".join([src_dict[5]] * 100)  # the model has 64 source positions
    with caplog.at_level("WARNING", logger="fconv_runtime"):
        assert len(translator.encode(line)) == translator.max_source_positions
        translator.translate([line], beam=2)
    assert "longer than the model's 64 source positions" in caplog.text


# ------------------------------------------------------------------------------- without torch, fairseq

BLOCK_TORCH_AND_FAIRSEQ = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "fairseq", "fconv_plugin"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocker())
from fconv_runtime.cli import main
sys.exit(main())
"""


def test_onnx_runtime_cli_runs_without_torch_and_fairseq(search_model, onnx_export):
    _, src_dict, _ = search_model
    translator = Translator(str(onnx_export[1]))
    words = [src_dict[i] for i in range(src_dict.nspecial, len(src_dict))]
    lines = [" ".join(words[:6]), "", " ".join(words[4:8])]
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH_AND_FAIRSEQ, str(onnx_export[1]), "--beam", "4"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == translator.translate(lines, beam=4)


# ------------------------------------------------------------------------------- refusals


def test_refuses_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="not a directory: give the OUTDIR that fconv-ext-export wrote"):
        Translator(str(tmp_path / "nowhere"))


def test_refuses_truncated_graph(onnx_export, tmp_path):
    copy = copy_of(onnx_export[1], tmp_path)
    step = copy / "step.onnx"
    step.write_bytes(step.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="does not match its checksum .* truncated or corrupt; copy it again"):
        Translator(str(copy))


def test_refuses_newer_format_version(onnx_export, tmp_path):
    copy = copy_of(onnx_export[1], tmp_path)
    rewrite_manifest(copy, lambda m: m.update(format_version=m["format_version"] + 1))
    with pytest.raises(ArtifactError, match="format version 2; .* upgrade fconv-ext"):
        Translator(str(copy))


def test_refuses_dictionary_of_another_size(onnx_export, tmp_path):
    copy = copy_of(onnx_export[1], tmp_path)
    with open(copy / "dict.de.txt", "a", encoding="utf-8") as f:
        f.write("extra-word 1\n")
    rewrite_manifest(copy, lambda m: None)
    with pytest.raises(ArtifactError, match="has 25 symbols but the exported graph's embedding has 24 rows"):
        Translator(str(copy))


@pytest.mark.parametrize("arch", ["fconv_ext_lm", "fconv_ext_self_att"])
def test_export_refuses_models_without_a_step(arch, tmp_path):
    from helpers import make_dictionary

    from fconv_plugin.models.build import build_model_from_config

    src_dict, tgt_dict = make_dictionary(20), make_dictionary(20)
    config = {"_name": arch, "decoder_embed_dim": 16, "decoder_layers": "[(16, 3)]", "decoder_out_embed_dim": 16}
    if arch == "fconv_ext_self_att":
        config.update(SELF_ATT_BASE_SMALL, max_source_positions=64, max_target_positions=64)
    model = build_model_from_config(config, src_dict, tgt_dict)
    checkpoint = save_checkpoint(tmp_path / "ckpt", model, src_dict, tgt_dict, config)
    with pytest.raises(ExportError, match="has no decoder step: only fconv_ext models"):
        export(str(checkpoint), str(tmp_path / "out"), "onnx")
    assert not (tmp_path / "out").exists()


def test_export_refuses_non_empty_outdir(onnx_export):
    with pytest.raises(ExportError, match="exists and is not empty: choose another OUTDIR, or pass --force"):
        export(str(onnx_export[0]), str(onnx_export[1]), "onnx")
