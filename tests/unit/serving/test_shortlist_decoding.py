"""Decoding with a vocabulary shortlist (opt-in): FConvBeamSearch scores only the batch's candidate
target words and gives the hypotheses fairseq's generator gives for a model that can only say those
words, through the pure-tensor step and through the incremental interface; the model itself stays
exact.  Every way of selecting it (model override, task flag, hub) through fairseq's tools:
tests/integration/test_shortlist_decoding_cli.py.

The shortlist file format and builder are tested in test_shortlist.py."""

import copy
import math

import numpy as np
import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from helpers import make_dictionary, mini_fconv_ext_for_search, random_batch, MINI_FCONV_EXT as SMALL
from fconv_plugin.serving.beam_search import FConvBeamSearch
from fconv_plugin.models import build_model_from_config
from fconv_plugin.serving.shortlist import dictionary_record, save, shortlist_for

VOCAB = 300


def write_shortlist(path, src_dict, tgt_dict, n_best=4, n_frequent=20, seed=0):
    """A shortlist file with random translation tables (what matters here is which words it allows)."""
    rng = np.random.default_rng(seed)
    table = rng.integers(tgt_dict.nspecial, len(tgt_dict), size=(len(src_dict), n_best))
    table[: src_dict.nspecial] = -1  # specials translate to nothing
    counts = rng.integers(1, 1000, size=len(tgt_dict))
    header = {
        "source": dictionary_record(src_dict, "en"),
        "target": dictionary_record(tgt_dict, "de"),
        "n_best": n_best,
        "n_frequent": n_frequent,
    }
    save(str(path), table, np.ones(table.shape), counts, header)
    return path


def shortlisted_model(tmp_path, seed=0, need_attn=True, folded=True, **shortlist_options):
    """A random fconv_ext model decoding with a random shortlist, and its dictionaries.  ``folded``:
    ready for inference (FConvBeamSearch decodes it through the pure-tensor step), else weight norm
    live (through the incremental interface)."""
    model, src_dict, tgt_dict = mini_fconv_ext_for_search(VOCAB, seed, eos_bias=3.0)  # hypotheses of different lengths
    path = write_shortlist(tmp_path / "shortlist.npz", src_dict, tgt_dict, **shortlist_options)
    model.shortlist_path = str(path)
    model.eval()
    if folded:
        model.make_generation_fast_(need_attn=need_attn)
    return model, src_dict, tgt_dict


def restricted_copy(model, allowed):
    """The same model without a shortlist whose vocabulary projection can only produce ``allowed``:
    the reference a shortlist must reproduce (bias -inf on every other word)."""
    reference = copy.deepcopy(model)
    reference.shortlist_path = None
    with torch.no_grad():
        banned = torch.ones(reference.decoder.fc3.out_features, dtype=torch.bool)
        banned[allowed] = False
        reference.decoder.fc3.bias[banned] = -math.inf
    return reference


def sample_for(src_dict, lengths=(7, 3, 9, 5, 1, 8)):
    src = random_batch(src_dict, list(lengths), seed=3)
    return {"net_input": {"src_tokens": src, "src_lengths": torch.tensor(lengths)}, "id": torch.arange(len(lengths))}


def test_the_shortlist_is_loaded_once_per_model_and_file(tmp_path):
    model, src_dict, _ = shortlisted_model(tmp_path)
    first = shortlist_for(model)
    assert shortlist_for(model) is first
    src = random_batch(src_dict, [7, 3, 9])
    assert torch.isin(src[src.ge(4)], torch.arange(VOCAB)).all()
    candidates = first.candidates(src)
    assert 4 < candidates.numel() < VOCAB and torch.equal(candidates, torch.unique(candidates))
    model.shortlist_path = None
    assert shortlist_for(model) is None


def test_the_model_itself_stays_exact(tmp_path):
    """The shortlist is the search's, not the model's: training, validation and fairseq's own
    generator see the whole vocabulary."""
    model, src_dict, tgt_dict = shortlisted_model(tmp_path, folded=False)
    exact = copy.deepcopy(model)
    exact.shortlist_path = None
    src = random_batch(src_dict, [5, 2])
    prev = random_batch(tgt_dict, [4, 4], seed=4, left_pad=False)
    with torch.no_grad():
        for a, b in ((model.train(), exact.train()), (model.eval(), exact.eval())):
            torch.manual_seed(0)
            got = a(src, torch.tensor([5, 2]), prev)[0]
            torch.manual_seed(0)
            want = b(src, torch.tensor([5, 2]), prev)[0]
            assert torch.equal(got, want) and got.size(-1) == VOCAB


@pytest.mark.parametrize("beam,nbest", [(1, 1), (5, 3)])
@pytest.mark.parametrize("folded", [True, False])
def test_fconv_beam_search_with_a_shortlist_equals_a_model_restricted_to_it(tmp_path, beam, nbest, folded):
    model, src_dict, tgt_dict = shortlisted_model(tmp_path, folded=folded)
    sample = sample_for(src_dict)
    allowed = shortlist_for(model).candidates(sample["net_input"]["src_tokens"])
    reference = restricted_copy(model, allowed)
    with torch.no_grad():
        got = FConvBeamSearch([model], tgt_dict, beam_size=beam).generate([model], sample)
        want = SequenceGenerator([reference], tgt_dict, beam_size=beam).generate([reference], sample)
    for nbest_got, nbest_want in zip(got, want):
        for a, b in zip(nbest_got[:nbest], nbest_want[:nbest]):
            assert torch.equal(a["tokens"], b["tokens"])
            assert torch.isin(a["tokens"], allowed).all()
            torch.testing.assert_close(a["positional_scores"], b["positional_scores"], rtol=1e-5, atol=1e-5)


def test_a_shortlist_of_the_whole_vocabulary_changes_nothing(tmp_path):
    model, src_dict, tgt_dict = shortlisted_model(tmp_path, n_frequent=VOCAB)
    exact = copy.deepcopy(model)
    exact.shortlist_path = None
    sample = sample_for(src_dict)
    assert shortlist_for(model).candidates(sample["net_input"]["src_tokens"]).numel() == VOCAB
    for cls in (SequenceGenerator, FConvBeamSearch):
        with torch.no_grad():
            got = cls([model], tgt_dict, beam_size=5).generate([model], sample)
            want = cls([exact], tgt_dict, beam_size=5).generate([exact], sample)
        for a, b in zip(got, want):
            assert [h["tokens"].tolist() for h in a] == [h["tokens"].tolist() for h in b]


def test_a_shortlist_for_other_dictionaries_is_refused_when_the_generator_is_built(tmp_path):
    src_dict, tgt_dict = make_dictionary(VOCAB), make_dictionary(VOCAB)
    other = make_dictionary(VOCAB + 1)
    path = write_shortlist(tmp_path / "other.npz", src_dict, other)
    model = build_model_from_config(dict(SMALL, shortlist=str(path)), src_dict, tgt_dict)
    assert model.shortlist_path == str(path)
    with pytest.raises(ValueError, match="built for another target dictionary"):
        FConvBeamSearch([model.eval()], tgt_dict, beam_size=2)


@pytest.mark.parametrize("beam,nbest,align", [(1, 1, False), (5, 3, False), (4, 2, True)])
def test_fconv_beam_search_over_the_shortlist_equals_fairseqs_generator(tmp_path, beam, nbest, align):
    """FConvBeamSearch searches the C shortlisted words directly (R x C log-probabilities) and maps
    them back; fairseq's generator on the restricted model searches R x V with -inf outside.  Same
    hypotheses and alignments; scores equal up to the order of summation inside the log-softmax."""
    from fairseq.sequence_generator import SequenceGeneratorWithAlignment
    from fconv_plugin.serving.beam_search import FConvBeamSearchWithAlignment

    model, src_dict, tgt_dict = shortlisted_model(tmp_path)
    sample = sample_for(src_dict)
    allowed = shortlist_for(model).candidates(sample["net_input"]["src_tokens"])
    reference = restricted_copy(model, allowed)
    classes = (
        (SequenceGeneratorWithAlignment, FConvBeamSearchWithAlignment)
        if align
        else (SequenceGenerator, FConvBeamSearch)
    )
    extra = {"print_alignment": "hard"} if align else {}
    with torch.no_grad():
        want = classes[0]([reference], tgt_dict, beam_size=beam, **extra).generate([reference], sample)
        got = classes[1]([model], tgt_dict, beam_size=beam, **extra).generate([model], sample)
    for nbest_got, nbest_want in zip(got, want):
        assert len(nbest_got) == len(nbest_want)
        for a, b in zip(nbest_got[:nbest], nbest_want[:nbest]):
            assert torch.equal(a["tokens"], b["tokens"])
            assert torch.isin(a["tokens"], allowed).all()
            torch.testing.assert_close(a["positional_scores"], b["positional_scores"], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a["attention"], b["attention"])
            if align:
                assert a["alignment"] == b["alignment"]


def test_the_step_scores_the_shortlist_rows_only(tmp_path, monkeypatch):
    """The R x C path really runs: the step is given the C rows of fc3 (not the V ones)."""
    from fconv_plugin.serving.step import DecoderStep

    model, src_dict, tgt_dict = shortlisted_model(tmp_path)
    sample = sample_for(src_dict)
    columns = shortlist_for(model).candidates(sample["net_input"]["src_tokens"]).numel()
    rows = []
    original = DecoderStep.forward

    def spy(self, *args, vocabulary_weight=None, vocabulary_bias=None, **kwargs):
        rows.append(None if vocabulary_weight is None else vocabulary_weight.size(0))
        return original(self, *args, vocabulary_weight=vocabulary_weight, vocabulary_bias=vocabulary_bias, **kwargs)

    monkeypatch.setattr(DecoderStep, "forward", spy)
    with torch.no_grad():
        FConvBeamSearch([model], tgt_dict, beam_size=5).generate([model], sample)
    assert rows and all(r == columns for r in rows) and columns < VOCAB


def test_ensemble_with_one_shortlist_equals_fairseqs_generator(tmp_path):
    first, src_dict, tgt_dict = shortlisted_model(tmp_path, seed=0)
    second, _, _ = shortlisted_model(tmp_path, seed=1)  # same dictionaries and shortlist, other weights
    sample = sample_for(src_dict)
    models = [first, second]
    allowed = shortlist_for(first).candidates(sample["net_input"]["src_tokens"])
    references = [restricted_copy(model, allowed) for model in models]
    with torch.no_grad():
        want = SequenceGenerator(references, tgt_dict, beam_size=4).generate(references, sample)
        got = FConvBeamSearch(models, tgt_dict, beam_size=4).generate(models, sample)
    for a, b in zip(got, want):
        assert [h["tokens"].tolist() for h in a] == [h["tokens"].tolist() for h in b]
        for x, y in zip(a, b):
            torch.testing.assert_close(x["positional_scores"], y["positional_scores"], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- through fairseq's tools
