"""Lexical shortlists: the builder (fconv_plugin/cli/shortlist.py, eflomal) and the file/loader
(fconv_plugin/serving/shortlist.py): what a file holds, which candidates a batch gets, what bad files raise.
On the real corpus slice: tests/integration/test_shortlist_cli.py."""

import json
import pickle
import random

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary

from helpers import make_dictionary
from fconv_plugin.serving import shortlist as sl_file
from fconv_plugin.cli import shortlist as builder
from fconv_plugin.serving.shortlist import Shortlist, ShortlistError


def toy_dictionaries():
    """Source a0..a5 and target x0..x5 (+ 'rare', seen once): the toy corpus's vocabularies."""
    src, tgt = Dictionary(), Dictionary()
    for i in range(6):
        src.add_symbol(f"a{i}")
        tgt.add_symbol(f"x{i}")
    tgt.add_symbol("rare")
    return src, tgt


def toy_corpus(src, tgt, n=300, seed=0):
    """Sentences of 3-5 source words a_i whose translation is x_i, in reverse order (so the alignment is
    obvious from co-occurrence, not from position); a3 is translated x3 two times in three, else x4."""
    rng = random.Random(seed)
    src_sents, tgt_sents = [], []
    for k in range(n):
        words = [rng.randrange(6) for _ in range(rng.randint(3, 5))]
        trans = [4 if w == 3 and k % 3 == 0 else w for w in words]
        src_sents.append(np.array([src.index(f"a{w}") for w in words]))
        tgt_sents.append(np.array([tgt.index(f"x{w}") for w in reversed(trans)]))
    tgt_sents[0] = np.append(tgt_sents[0], tgt.index("rare"))
    return src_sents, tgt_sents


def write_toy(path, src, tgt, n_best=3, n_frequent=2, **header):
    src_sents, tgt_sents = toy_corpus(src, tgt)
    table, probs, counts, stats = builder.build(src_sents, tgt_sents, src, tgt, n_best)
    sl_file.save(
        str(path),
        table,
        probs,
        counts,
        dict(
            {
                "source": sl_file.dictionary_record(src, "en"),
                "target": sl_file.dictionary_record(tgt, "de"),
                "n_best": n_best,
                "n_frequent": n_frequent,
                "stats": stats,
            },
            **header,
        ),
    )
    return table, probs, counts


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(path, src_dict, tgt_dict, table, probs, counts) of a shortlist built by eflomal on the toy corpus."""
    src, tgt = toy_dictionaries()
    path = tmp_path_factory.mktemp("toy") / "toy.npz"
    table, probs, counts = write_toy(path, src, tgt)
    return path, src, tgt, table, probs, counts


# --------------------------------------------------------------------------- building
def test_best_targets_rank_hand_made_links_by_count_then_id():
    """p(t|s) from link counts: source 5 linked to 7 three times, to 9 and 8 once each (tie: lower id
    first), source 2 (a special) gets no entry, source 6 has one target; rows cut at n_best."""
    s = np.array([5, 5, 5, 5, 5, 2, 6])
    t = np.array([7, 9, 7, 8, 7, 7, 8])
    table, probs = builder.best_targets(s, t, n_src=8, n_tgt=10, n_best=2, src_nspecial=4)
    assert table[5].tolist() == [7, 8]
    assert probs[5].tolist() == pytest.approx([3 / 5, 1 / 5])
    assert table[6].tolist() == [8, -1] and probs[6].tolist() == pytest.approx([1.0, 0.0])
    assert (table[[0, 1, 2, 3, 4, 7]] == -1).all()


def test_symmetrization_of_forward_and_reverse_links():
    assert builder.symmetrize("0-0 1-2", "0-0 2-1", "union") == {(0, 0), (1, 2), (2, 1)}
    assert builder.symmetrize("0-0 1-2", "0-0 2-1", "intersection") == {(0, 0)}
    assert builder.symmetrize("0-0 1-2", "0-0 2-1", "forward") == {(0, 0), (1, 2)}
    assert builder.symmetrize("0-0 1-2", "0-0 2-1", "reverse") == {(0, 0), (2, 1)}
    with pytest.raises(ValueError, match="grow"):
        builder.symmetrize("", "", "grow")


def test_eflomal_finds_the_obvious_translations(toy):
    """On the toy corpus a_i -> x_i (a3 -> x3 in two of three sentences, else x4): each source word's best
    target is its translation, a3's second is x4, and p(x_i|a_i) dominates."""
    _, src, tgt, table, probs, counts = toy
    for i in range(6):
        assert table[src.index(f"a{i}"), 0] == tgt.index(f"x{i}"), i
        assert probs[src.index(f"a{i}"), 0] > 0.6, (i, probs[src.index(f"a{i}")])
    assert table[src.index("a3"), 1] == tgt.index("x4")
    assert 0.2 < probs[src.index("a3"), 1] < 0.45
    assert (table[: src.nspecial] == -1).all()  # specials have no entry
    assert counts[tgt.index("rare")] == 1 and counts[: tgt.nspecial].sum() == 0


# --------------------------------------------------------------------------- loading, candidates
def test_candidates_are_sorted_unique_with_specials_frequent_set_and_best_targets(toy):
    path, src, tgt, table, _, counts = toy
    sl = Shortlist.load(str(path), src, tgt)
    assert (sl.n_best, sl.n_frequent) == (3, 2)
    assert sl.metadata["source"]["lang"] == "en" and sl.metadata["target"]["size"] == len(tgt)
    frequent = set(np.lexsort((np.arange(len(counts)), -counts))[:2].tolist())
    a1, a3 = src.index("a1"), src.index("a3")
    batch = torch.tensor([[src.pad(), a1, src.eos()], [a3, a1, src.eos()]])  # B x S, left-padded
    cands = sl.candidates(batch)
    assert cands.dtype == torch.long and cands.dim() == 1
    assert cands.tolist() == sorted(set(cands.tolist()))
    assert cands[: tgt.nspecial].tolist() == list(range(tgt.nspecial))
    expected = set(range(tgt.nspecial)) | frequent | set(table[[a1, a3]].ravel().tolist()) - {-1}
    assert set(cands.tolist()) == expected
    # the set leaves words out (which ones besides the frequent and aligned ones varies: eflomal samples)
    assert len(expected) < len(tgt)


def test_sentence_of_unknown_tokens_gets_the_frequent_set(toy):
    path, src, tgt, _, _, counts = toy
    sl = Shortlist.load(str(path), src, tgt, n_frequent=4)
    cands = sl.candidates(torch.tensor([[src.unk(), src.unk(), src.eos()]]))
    frequent = np.lexsort((np.arange(len(counts)), -counts))[:4]
    assert cands.tolist() == sorted(set(range(tgt.nspecial)) | set(frequent.tolist()))


def test_load_time_n_best_and_n_frequent(toy):
    path, src, tgt, table, _, _ = toy
    a3 = src.index("a3")
    one = Shortlist.load(str(path), src, tgt, n_best=1, n_frequent=0)
    assert one.candidates(torch.tensor([[a3]])).tolist() == list(range(tgt.nspecial)) + [table[a3, 0]]
    with pytest.raises(ShortlistError, match="built with n_best=3"):
        Shortlist.load(str(path), src, tgt, n_best=4)


def test_token_ids_outside_the_source_dictionary_are_refused(toy):
    path, src, tgt, *_ = toy
    with pytest.raises(ValueError, match=r"source token ids must lie in \[0, 10\)"):
        Shortlist.load(str(path), src, tgt).candidates(torch.tensor([[len(src)]]))


# --------------------------------------------------------------------------- bad files
def test_file_for_other_dictionaries_is_refused(toy):
    path, src, tgt, *_ = toy
    with pytest.raises(ShortlistError, match="another target dictionary .*rebuild it"):
        Shortlist.load(str(path), src, make_dictionary(len(tgt)))
    with pytest.raises(ShortlistError, match="another source dictionary"):
        Shortlist.load(str(path), make_dictionary(len(src)), tgt)


def test_missing_truncated_foreign_and_newer_files_are_refused(toy, tmp_path):
    path, src, tgt, *_ = toy
    with pytest.raises(ShortlistError, match="does not exist; build one .*fconv-ext-shortlist"):
        Shortlist.load(str(tmp_path / "nope.npz"), src, tgt)
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ShortlistError, match="truncated or corrupt"):
        Shortlist.load(str(tmp_path / "cut.npz"), src, tgt)
    (tmp_path / "pickle.pkl").write_bytes(pickle.dumps({"best_targets": [1, 2]}))  # never unpickled
    with pytest.raises(ShortlistError, match="truncated or corrupt .*pickled"):
        Shortlist.load(str(tmp_path / "pickle.pkl"), src, tgt)
    torch.save({"best_targets": torch.zeros(2)}, tmp_path / "model.pt")  # a zip, but not ours
    with pytest.raises(ShortlistError, match="not an fconv-ext shortlist file"):
        Shortlist.load(str(tmp_path / "model.pt"), src, tgt)
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ShortlistError, match="not an fconv-ext shortlist file"):
        Shortlist.load(str(tmp_path / "other.npz"), src, tgt)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays["header"].tobytes())
    arrays["header"] = np.frombuffer(json.dumps(dict(header, version=99)).encode(), dtype=np.uint8)
    np.savez(tmp_path / "v99.npz", **arrays)
    with pytest.raises(ShortlistError, match="format version 99"):
        Shortlist.load(str(tmp_path / "v99.npz"), src, tgt)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    arrays["best_targets"] = arrays["best_targets"] + len(tgt)  # ids past the target vocabulary
    np.savez(tmp_path / "bad_ids.npz", **arrays)
    with pytest.raises(ShortlistError, match="corrupt"):
        Shortlist.load(str(tmp_path / "bad_ids.npz"), src, tgt)


def test_shortlist_error_is_a_value_error():
    assert issubclass(ShortlistError, ValueError)


def test_bad_aligner_options_are_refused_before_aligning():
    with pytest.raises(SystemExit, match="unknown --aligner-options"):
        builder.parse_aligner_options('{"seed": 1}')
    with pytest.raises(SystemExit, match="not valid JSON"):
        builder.parse_aligner_options("model=3")
    assert builder.parse_aligner_options('{"model": 2, "n_iterations": [1, 2, 3]}') == {
        "model": 2,
        "n_iterations": (1, 2, 3),
    }


def test_main_on_raw_text_writes_the_header_and_the_same_best_targets(tmp_path):
    """The command's --text-source/--text-target path, in-process on the toy corpus as text: the header
    records dictionaries, options and corpus; each a_i's best target is x_i; a piece missing from the
    dictionary is read as UNK (no entry)."""
    src, tgt = toy_dictionaries()
    src.save(str(tmp_path / "dict.en.txt"))
    tgt.save(str(tmp_path / "dict.de.txt"))
    src_sents, tgt_sents = toy_corpus(src, tgt)
    for path, sents, d in ((tmp_path / "t.en", src_sents, src), (tmp_path / "t.de", tgt_sents, tgt)):
        path.write_text("".join(" ".join(d[i] for i in s) + "\n" for s in sents))
    with open(tmp_path / "t.en", "a") as f:
        f.write("a1 zzz\n")
    with open(tmp_path / "t.de", "a") as f:
        f.write("x1 x2\n")
    builder.main(
        [
            str(tmp_path),
            "-s",
            "en",
            "-t",
            "de",
            "--out",
            str(tmp_path / "sl.npz"),
            "--n-best",
            "2",
            "--n-frequent",
            "3",
            "--text-source",
            str(tmp_path / "t.en"),
            "--text-target",
            str(tmp_path / "t.de"),
            "--aligner-options",
            '{"n_samplers": 2}',
        ]
    )
    sl = Shortlist.load(str(tmp_path / "sl.npz"), src, tgt)
    assert (sl.n_best, sl.n_frequent) == (2, 3)
    meta = sl.metadata
    assert meta["source"] == {
        "lang": "en",
        "size": len(src),
        "nspecial": 4,
        "sha256": sl_file.dictionary_fingerprint(src),
    }
    assert meta["aligner"]["options"] == {"n_samplers": 2} and meta["stats"]["sentences"] == 301
    assert meta["corpus"]["text_source"].endswith("t.en") and meta["format"] == "fconv-ext-shortlist"
    with np.load(tmp_path / "sl.npz", allow_pickle=False) as npz:
        table = npz["best_targets"]
    assert [table[src.index(f"a{i}"), 0] for i in range(6)] == [tgt.index(f"x{i}") for i in range(6)]
    assert (table[src.unk()] == -1).all()
    last_source = builder.read_text(str(tmp_path / "t.en"), str(tmp_path / "t.de"), src, tgt)[0][-1].tolist()
    assert last_source == [src.index("a1"), src.unk()]


# --------------------------------------------------------------------------- the command on a real slice
