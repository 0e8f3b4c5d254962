"""FConvBeamSearch returns what fairseq's SequenceGenerator returns: same n-best lists,
same tokens, bit-identical scores, positional scores and attention, for every option it
implements; everything else is handed to fairseq."""

import argparse
import logging
import math
from typing import Optional

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator, SequenceGeneratorWithAlignment
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from helpers import build_twins, mini_fconv_ext_for_search, random_batch
from fconv_plugin.serving import beam_search
from fconv_plugin.serving.beam_search import FAST_PATH, FConvBeamSearch, FConvBeamSearchWithAlignment, top_tokens


def small_model(vocab: int, seed: int = 0, eos_bias: Optional[float] = None):
    """A random fconv_ext model whose hypotheses end at different steps (EOS made likelier)."""
    model, _, tgt_dict = mini_fconv_ext_for_search(
        vocab, seed, eos_bias if eos_bias is not None else (2.0 if vocab < 100 else 3.0)
    )
    return model.eval(), tgt_dict


def sample_for(dictionary, lengths=(7, 3, 9, 5, 1, 8), seed=3):
    src = random_batch(dictionary, list(lengths), seed=seed)
    return {"net_input": {"src_tokens": src, "src_lengths": torch.tensor(lengths)}, "id": torch.arange(len(lengths))}


def decode_both(model, tgt_dict, sample, **options):
    return decode_ensemble_both([model], tgt_dict, sample, **options)


def decode_ensemble_both(models, tgt_dict, sample, classes=(SequenceGenerator, FConvBeamSearch), **options):
    out = []
    for cls in classes:
        gen = cls(models, tgt_dict, **options)
        with torch.no_grad():
            out.append(gen.generate(models, sample))
    return out


def assert_same(expected, actual):
    assert len(expected) == len(actual)
    for nbest_a, nbest_b in zip(expected, actual):
        assert len(nbest_a) == len(nbest_b)
        for a, b in zip(nbest_a, nbest_b):
            assert torch.equal(a["tokens"], b["tokens"])
            assert torch.equal(a["score"], b["score"])
            assert torch.equal(a["positional_scores"], b["positional_scores"])
            assert torch.equal(a["attention"], b["attention"])


CASES = {
    "default": {},
    "min_len": {"min_len": 3},
    "unk_penalty_lenpen": {"unk_penalty": 0.5, "len_penalty": 0.6},
    "unnormalized_temperature": {"normalize_scores": False, "temperature": 0.7},
    "max_len_reached": {"max_len_a": 0, "max_len_b": 3},
}


@pytest.mark.parametrize("vocab", [60, 901])  # 901: the blockwise candidate search with a tail block
@pytest.mark.parametrize("beam", [1, 2, 5])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("path", ["incremental", "step"])
def test_same_results_as_fairseq(vocab, beam, case, path, monkeypatch):
    """Weight norm live: FConvBeamSearch drives fairseq's incremental interface; folded (inference):
    fconv_ext's pure-tensor step (serving/step.py).  Both give fairseq's results bit for bit."""
    model, tgt_dict = small_model(vocab)
    if path == "step":
        model.make_generation_fast_(need_attn=True)
    steps = []
    monkeypatch.setattr(beam_search._StepDecoder, "log_probs", counted(beam_search._StepDecoder.log_probs, steps))
    options = {"beam_size": beam, "max_len_a": 1.2, "max_len_b": 10, **CASES[case]}
    expected, actual = decode_both(model, tgt_dict, sample_for(tgt_dict), **options)
    assert_same(expected, actual)
    if case == "default":  # the batch shrinks during the search: hypotheses of different lengths
        assert len({len(h[0]["tokens"]) for h in expected}) > 2
    uses_step = path == "step" and "temperature" not in CASES[case]  # a temperature needs the logits
    assert bool(steps) == uses_step


def counted(function, calls):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return wrapper


def test_attention_is_returned_like_fairseq():
    model, tgt_dict = small_model(901)
    model.make_generation_fast_(need_attn=True)
    expected, actual = decode_both(model, tgt_dict, sample_for(tgt_dict), beam_size=4, max_len_b=8)
    assert expected[0][0]["attention"].numel() > 0
    assert_same(expected, actual)


def test_print_alignment_gives_fairseqs_alignments():
    model, tgt_dict = small_model(901)
    model.make_generation_fast_(need_attn=True)
    sample = sample_for(tgt_dict)
    results = []
    for cls in (SequenceGeneratorWithAlignment, FConvBeamSearchWithAlignment):
        gen = cls([model], tgt_dict, beam_size=3, max_len_b=8, print_alignment="hard")
        with torch.no_grad():
            results.append(gen.generate([model], sample))
    assert_same(*results)
    assert sum(len(nbest[0]["alignment"]) for nbest in results[0]) > 10
    for nbest_a, nbest_b in zip(*results):
        assert [a["alignment"] for a in nbest_a] == [b["alignment"] for b in nbest_b]  # (source, target) pairs


def test_nan_log_probabilities_are_treated_as_fairseq_does():
    """fairseq replaces NaN by -inf before the search; here NaN is found among the candidates."""
    model, tgt_dict = small_model(901)
    output_layer = model.decoder.output_layer  # both generators' logits come from here
    calls = {"n": 0}

    def with_nan(*args, **kwargs):
        logits = output_layer(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] % 3 == 2:  # some steps: NaN in a few rows, at the row's best token and elsewhere
            logits = logits.clone()
            best = logits[0, -1].argmax()
            logits[0, -1, best] = float("nan")
            logits[2:4, -1, 100:110] = float("nan")
        return logits

    model.decoder.output_layer = with_nan
    expected, actual = decode_both(model, tgt_dict, sample_for(tgt_dict), beam_size=3, max_len_b=8)
    assert_same(expected, actual)


@pytest.mark.parametrize("vocab", [60, 901])
@pytest.mark.parametrize("beam", [1, 2, 5])
def test_exact_ties_come_out_in_fairseqs_order(vocab, beam, monkeypatch):
    """Logits rounded to halves: many candidates share one score exactly.  topk's order among
    equal values depends on the tensor it runs on, so the blockwise search hands tied
    sentences to fairseq's own topk; n-best lists, tokens and scores stay fairseq's."""
    model, tgt_dict = small_model(vocab)
    output_layer = model.decoder.output_layer  # both generators' logits come from here

    def with_ties(*args, **kwargs):
        return (output_layer(*args, **kwargs) * 2).round() / 2

    model.decoder.output_layer = with_ties
    searched_again = []
    original = FConvBeamSearch._fairseq_candidates

    def counting(*args, **kwargs):
        searched_again.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(FConvBeamSearch, "_fairseq_candidates", staticmethod(counting))
    expected, actual = decode_both(model, tgt_dict, sample_for(tgt_dict), beam_size=beam, max_len_b=8)
    assert_same(expected, actual)
    assert searched_again  # the ties were there and were handed over


def test_prefix_tokens_are_handed_to_fairseq():
    model, tgt_dict = small_model(60)
    sample = sample_for(tgt_dict)
    prefix = torch.full((6, 2), tgt_dict.index("w5"), dtype=torch.long)
    results = []
    for cls in (SequenceGenerator, FConvBeamSearch):
        gen = cls([model], tgt_dict, beam_size=3, max_len_b=8)
        if cls is FConvBeamSearch:
            assert gen.fast_path_unavailable(sample, prefix, None) == "prefix tokens"
        with torch.no_grad():
            results.append(gen.generate([model], sample, prefix_tokens=prefix))
    assert_same(*results)
    assert all(h[0]["tokens"][:2].tolist() == prefix[0].tolist() for h in results[1])


@pytest.mark.parametrize("vocab,n", [(8192, 10), (901, 4), (901, 2), (50, 10)])
def test_top_tokens_equals_topk(vocab, n):
    g = torch.Generator().manual_seed(vocab + n)
    x = torch.log_softmax(6 * torch.randn(37, vocab, generator=g), dim=-1)
    x[:, 1] = -math.inf
    x[5, :] = -math.inf
    x[5, 3] = -1.0
    x[7, 700 % vocab] = float("nan")
    values, indices = top_tokens(x, n)
    ref_values, ref_indices = torch.topk(x, n)
    assert torch.equal(values[:, 1:].nan_to_num(), ref_values[:, 1:].nan_to_num())
    assert torch.isnan(values[7, 0]) and torch.isnan(ref_values[7, 0])
    keep = torch.arange(37) != 5  # row 5: ties at -inf, any of them is a correct answer
    assert torch.equal(indices[keep], ref_indices[keep])
    assert indices[5, 0].item() == 3


def _translation_task(tgt_dict):
    return TranslationTask(TranslationConfig(), tgt_dict, tgt_dict)


def test_build_generator_picks_it_for_fconv_ext_only(monkeypatch):
    from fairseq.models.fconv import FConvModel

    model, tgt_dict = small_model(60)
    task = _translation_task(tgt_dict)
    args = argparse.Namespace(beam=3, max_len_a=0, max_len_b=10)
    assert type(task.build_generator([model], args)) is FConvBeamSearch
    assert (
        type(task.build_generator([model], argparse.Namespace(print_alignment="hard", beam=3)))
        is FConvBeamSearchWithAlignment
    )
    fconv = FConvModel.build_model(
        argparse.Namespace(
            arch="fconv",
            encoder_embed_dim=8,
            decoder_embed_dim=8,
            decoder_out_embed_dim=8,
            encoder_layers="[(8, 3)]",
            decoder_layers="[(8, 3)]",
            decoder_attention="True",
            dropout=0.1,
            share_input_output_embed=False,
            max_source_positions=64,
            max_target_positions=64,
            encoder_embed_path=None,
            decoder_embed_path=None,
        ),
        _StubTask(tgt_dict),
    )
    assert type(task.build_generator([fconv], args)) is SequenceGenerator
    monkeypatch.setenv("FCONV_EXT_BEAM_SEARCH", "fairseq")  # the switch (fconv_plugin.fairseq_fixes) is read per call
    assert type(task.build_generator([model], args)) is SequenceGenerator


class _StubTask:
    def __init__(self, d):
        self.source_dictionary = self.target_dictionary = d


# --- ensembles (--path a.pt:b.pt) ---------------------------------------------------------


def ensemble(n: int, vocab: int, need_attn: bool = False):
    """n fconv_ext models with different weights over one target dictionary (EOS made likelier:
    hypotheses of an ensemble of these end at different steps)."""
    models = []
    for seed in range(n):
        model, tgt_dict = small_model(vocab, seed=seed, eos_bias=2.0)
        model.make_generation_fast_(need_attn=need_attn)
        models.append(model)
    return models, tgt_dict


@pytest.fixture
def fast_path_steps(monkeypatch):
    """Counts the steps FConvBeamSearch's own search ran (0: every batch went to fairseq)."""
    steps = []
    original = FConvBeamSearch._candidates

    def counting(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FConvBeamSearch, "_candidates", counting)
    return steps


@pytest.mark.parametrize("n,vocab,beam", [(2, 60, 1), (2, 60, 5), (2, 901, 1), (2, 901, 5), (3, 901, 5)])
def test_ensemble_same_results_as_fairseq(n, vocab, beam, fast_path_steps):
    """Tokens, scores, positional scores and attention of every hypothesis (all ``beam`` of
    them: what --nbest prints from) equal fairseq's EnsembleModel + SequenceGenerator, bit for
    bit, on a padded batch whose sentences end at different steps."""
    models, tgt_dict = ensemble(n, vocab, need_attn=True)
    expected, actual = decode_ensemble_both(
        models, tgt_dict, sample_for(tgt_dict), beam_size=beam, max_len_a=1.2, max_len_b=10
    )
    assert_same(expected, actual)
    assert fast_path_steps  # decoded by FConvBeamSearch, not handed to fairseq
    assert len({len(h[0]["tokens"]) for h in expected}) > 2
    assert expected[0][0]["attention"].numel() > 0
    single, _ = decode_both(models[0], tgt_dict, sample_for(tgt_dict), beam_size=beam, max_len_a=1.2, max_len_b=10)
    assert any(not torch.equal(a[0]["score"], b[0]["score"]) for a, b in zip(single, actual))  # the ensemble counts


def test_ensemble_options_and_without_attention():
    """Temperature, length penalty, unk penalty, min length; models without need_attn (no attention)."""
    models, tgt_dict = ensemble(2, 901)
    options = {"beam_size": 4, "max_len_b": 9, "temperature": 0.7, "len_penalty": 0.6, "unk_penalty": 0.5, "min_len": 2}
    expected, actual = decode_ensemble_both(models, tgt_dict, sample_for(tgt_dict), **options)
    assert_same(expected, actual)


def test_ensemble_print_alignment_gives_fairseqs_alignments(fast_path_steps):
    models, tgt_dict = ensemble(2, 901, need_attn=True)
    classes = (SequenceGeneratorWithAlignment, FConvBeamSearchWithAlignment)
    results = decode_ensemble_both(
        models, tgt_dict, sample_for(tgt_dict), classes=classes, beam_size=3, max_len_b=8, print_alignment="hard"
    )
    assert_same(*results)
    assert fast_path_steps
    assert sum(len(nbest[0]["alignment"]) for nbest in results[0]) > 10
    for nbest_a, nbest_b in zip(*results):
        assert [a["alignment"] for a in nbest_a] == [b["alignment"] for b in nbest_b]


def test_ensemble_with_fconv_member_falls_back_to_fairseq(caplog, monkeypatch):
    """build_generator gives an ensemble with a fairseq fconv member fairseq's own generator
    (and says so once); its results are what fairseq's unwrapped build_generator gives."""
    from fairseq.tasks.fairseq_task import FairseqTask

    monkeypatch.setattr(beam_search, "_ANNOUNCED", set())
    ref, ext, src_dict, tgt_dict = build_twins(
        "fconv_iwslt_de_en",
        encoder_embed_dim=16,
        decoder_embed_dim=16,
        decoder_out_embed_dim=16,
        encoder_layers="[(16, 3)] * 2",
        decoder_layers="[(16, 3)] * 2",
    )
    task = TranslationTask(TranslationConfig(), src_dict, tgt_dict)
    args = argparse.Namespace(beam=3, max_len_a=0, max_len_b=8)
    sample = sample_for(src_dict, seed=4)
    with caplog.at_level(logging.INFO, logger="fconv_plugin"):
        ours = task.build_generator([ext, ref], args)
        task.build_generator([ext, ref], args)
    assert type(ours) is SequenceGenerator
    said = [r.getMessage() for r in caplog.records if r.name.startswith("fconv_plugin")]
    assert said == ["decoding with fairseq's SequenceGenerator: model FConvModel is not an fconv_ext model"]
    theirs = FairseqTask.build_generator.__wrapped__(task, [ext, ref], args)
    with torch.no_grad():
        assert_same(theirs.generate([ext, ref], sample), ours.generate([ext, ref], sample))


# --- which generator decodes, said once at INFO level ---------------------------------------


@pytest.fixture
def said(caplog, monkeypatch):
    """The fconv_plugin log lines of the test (announce()'s once-per-process memory emptied)."""
    monkeypatch.setattr(beam_search, "_ANNOUNCED", set())
    caplog.set_level(logging.INFO, logger="fconv_plugin")
    return lambda: [r.getMessage() for r in caplog.records if r.name.startswith("fconv_plugin")]


def test_build_generator_says_which_generator_decodes(said, monkeypatch):
    models, tgt_dict = ensemble(2, 60)
    task = _translation_task(tgt_dict)
    for _ in range(2):  # the hub interface builds a generator per translate() call: said once
        assert type(task.build_generator(models, argparse.Namespace(beam=3))) is FConvBeamSearch
    assert said() == [FAST_PATH]
    assert type(task.build_generator(models[:1], argparse.Namespace(sampling=True, beam=3))) is FConvBeamSearch
    assert said()[-1] == "decoding with fairseq's SequenceGenerator: sampling"
    monkeypatch.setenv("FCONV_EXT_BEAM_SEARCH", "fairseq")
    assert type(task.build_generator(models, argparse.Namespace(beam=3))) is SequenceGenerator
    assert said()[-1] == "decoding with fairseq's SequenceGenerator: FCONV_EXT_BEAM_SEARCH=fairseq"
    assert len(said()) == 3


def test_generator_wide_fallbacks_are_said_when_built(said):
    model, tgt_dict = small_model(60)
    FConvBeamSearch([model], tgt_dict, beam_size=3, no_repeat_ngram_size=2)
    FConvBeamSearch([model], tgt_dict, beam_size=40)
    assert said() == [
        "decoding with fairseq's SequenceGenerator: --no-repeat-ngram-size",
        "decoding with fairseq's SequenceGenerator: vocabulary smaller than 2 * beam + 1",
    ]


def test_batch_fallbacks_are_said_once_per_generator(said):
    model, tgt_dict = small_model(60)
    sample = sample_for(tgt_dict)
    prefix = torch.full((6, 1), tgt_dict.index("w5"), dtype=torch.long)
    gen = FConvBeamSearch([model], tgt_dict, beam_size=2, max_len_b=5)
    with torch.no_grad():
        for _ in range(3):
            gen.generate([model], sample, prefix_tokens=prefix)
        gen.generate([model], sample)
    assert said() == [
        FAST_PATH,
        "FConvBeamSearch: batches with prefix tokens are decoded by fairseq's SequenceGenerator",
    ]


def test_switch_set_at_import_is_said(said):
    """A switch set before the plugin is imported leaves fairseq's build_generator as it is
    (no wrapper to say anything later): install_all says so instead."""
    from fconv_plugin import fairseq_fixes

    assert fairseq_fixes.install_all({"FCONV_EXT_BEAM_SEARCH": "fairseq", "FCONV_EXT_NO_FIXES": ""}) == [
        fix.name for fix in fairseq_fixes.FIXES if fix.name != "beam_search"
    ]  # idempotent: all installed already
    assert said() == [
        "beam_search left out (FCONV_EXT_BEAM_SEARCH=fairseq): every model decodes with fairseq's SequenceGenerator"
    ]
