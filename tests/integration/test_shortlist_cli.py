"""fconv-ext-shortlist (fconv_plugin/cli/shortlist.py) on the binarized gettext slice: the shortlist it
builds covers the test references; a missing split is refused."""

import sys

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary

from fconv_plugin.serving import shortlist as sl_file
from fconv_plugin.serving.shortlist import Shortlist


@pytest.mark.slow
def test_command_builds_a_shortlist_that_covers_the_test_references(data_bin, slice_shortlist):
    """The file of the real slice loads for data_bin's dictionaries and records how it was built.  Each
    test sentence alone gets a candidate set of ~14% of the vocabulary that holds ~90% of its reference
    tokens (measured: 93 of 672 symbols, 0.89 of the tokens; the 50 frequent ones alone hold 0.51), and a
    batch of all 37 sentences a set that still leaves part of the vocabulary out (measured: 415 of 672)."""
    from fairseq.data import data_utils

    out, log = slice_shortlist
    assert "wrote" in log and "eflomal aligned 1500 sentence pairs" in log
    src, tgt = Dictionary.load(str(data_bin / "dict.en.txt")), Dictionary.load(str(data_bin / "dict.de.txt"))
    sl = Shortlist.load(str(out), src, tgt)
    assert (sl.n_best, sl.n_frequent) == (5, 50)
    meta = sl.metadata
    assert meta["aligner"]["name"] == "eflomal" and meta["aligner"]["symmetrization"] == "union"
    assert meta["aligner"]["options"] == {"rel_iterations": 0.2}
    assert meta["corpus"]["subset"] == "train" and meta["stats"]["sentences"] == 1500
    assert meta["source"]["lang"] == "en" and meta["target"]["sha256"] == sl_file.dictionary_fingerprint(tgt)
    src_ds = data_utils.load_indexed_dataset(str(data_bin / "test.en-de.en"), src)
    tgt_ds = data_utils.load_indexed_dataset(str(data_bin / "test.en-de.de"), tgt)
    n_refs = sum(len(t) - 1 for t in tgt_ds)  # EOS not counted
    frequent_only = Shortlist.load(str(out), src, tgt, n_best=0)
    sizes, hits, frequent_hits = [], 0, 0
    for s, t in zip(src_ds, tgt_ds):
        t = t[:-1]
        cands = sl.candidates(s[None])  # 1 x S
        sizes.append(len(cands))
        hits += int(torch.isin(t, cands).sum())
        frequent_hits += int(torch.isin(t, frequent_only.candidates(s[None])).sum())
    assert tgt.nspecial + 50 < np.mean(sizes) < 0.2 * len(tgt), (np.mean(sizes), len(tgt))
    assert hits / n_refs > 0.85 and hits > 1.5 * frequent_hits, (hits, frequent_hits, n_refs)
    refs_no_eos = torch.cat([t[:-1] for t in tgt_ds])
    batch = torch.full((len(src_ds), max(len(s) for s in src_ds)), src.pad())
    for i, s in enumerate(src_ds):
        batch[i, batch.size(1) - len(s) :] = s  # left-padded, as fairseq batches them
    batch_cands = sl.candidates(batch)
    assert max(sizes) < len(batch_cands) < 0.8 * len(tgt)
    # --coverage printed the same numbers (one row: N 5, M 50, one batch of all 37 sentences)
    row = next(line for line in log.splitlines() if line.startswith("| 5 | 50 |")).strip("|").split("|")
    assert float(row[2]) == pytest.approx(np.mean(sizes), abs=0.5)
    assert int(row[3].split()[0]) == len(batch_cands)
    assert float(row[4]) == pytest.approx(100 * hits / n_refs, abs=0.05)
    assert float(row[5]) == pytest.approx(100 * torch.isin(refs_no_eos, batch_cands).float().mean().item(), abs=0.05)


@pytest.mark.slow
def test_command_refuses_a_missing_split(data_bin, tmp_path):
    import subprocess

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fconv_plugin.cli.shortlist",
            str(data_bin),
            "-s",
            "en",
            "-t",
            "de",
            "--out",
            str(tmp_path / "x.npz"),
            "--subset",
            "nosuch",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "no binarized 'nosuch' split" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "x.npz").exists()
