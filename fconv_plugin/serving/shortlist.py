"""Lexical shortlists: the target tokens worth scoring for a batch of source sentences.

A shortlist restricts decoding's output projection and log-softmax to a per-batch candidate set of target
tokens (the vocabulary selection of the authors' Lua toolkit, ``-topnalign``/``-nmostcommon``): the union of

* every special token (``id < tgt_dict.nspecial``: BOS, PAD, EOS, UNK), at its own index,
* the ``n_frequent`` most frequent target tokens of the training split, and
* for every source token present in the batch, its ``n_best`` target tokens by translation probability
  p(t|s) estimated from word alignments.

``fconv-ext-shortlist`` (:mod:`fconv_plugin.cli.shortlist`) builds the file; this module defines the file
format and reads it.  The file is a NumPy ``.npz`` archive read with ``allow_pickle=False`` (no pickle):

``header``
    UTF-8 JSON as a ``uint8`` array: ``format`` (``"fconv-ext-shortlist"``), ``version``, the languages,
    sizes and SHA-256 fingerprints of the source and target dictionaries it was built for, ``n_best``,
    ``n_frequent`` and how it was built (aligner, options, corpus, date).
``best_targets``
    ``int32`` ``len(src_dict) x n_best``: row ``s`` holds the target ids of source token ``s`` ordered by
    p(t|s), highest first, ``-1`` where ``s`` has fewer aligned targets (and for specials: no entry).
``best_probs``
    ``float32``, same shape: those p(t|s) (0 where ``-1``), for inspection.
``target_counts``
    ``int64`` ``len(tgt_dict)``: each target token's frequency in the training split, so the frequent set
    can be re-chosen at load time (``n_frequent=``) without rebuilding.

Usage (the interface decoding calls)::

    sl = Shortlist.load(path, src_dict, tgt_dict)      # raises ShortlistError on any bad file
    cands = sl.candidates(src_tokens)                  # B x S LongTensor -> sorted unique 1-D LongTensor
    sl = shortlist_for(model)                          # the model's own (its ``shortlist`` option), loaded once

Nothing heavy is imported here (NumPy and torch only).
"""

import hashlib
import json
import logging
import os
import weakref
import zipfile
from typing import Any, Dict, Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

FORMAT = "fconv-ext-shortlist"
VERSION = 1
#: The arrays every version-1 file holds besides ``header``.
ARRAYS = ("best_targets", "best_probs", "target_counts")
BUILD_HINT = (
    "build one for the model's data with: fconv-ext-shortlist DATA_BIN --source-lang SRC --target-lang TGT --out FILE"
)


class ShortlistError(ValueError):
    """A shortlist file that cannot be used with the given dictionaries; the message says what to do."""


def dictionary_fingerprint(dictionary) -> str:
    """SHA-256 (hex) of a fairseq Dictionary's symbol list in index order: equal iff the ids mean the same."""
    h = hashlib.sha256()
    for symbol in dictionary.symbols:
        h.update(symbol.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def dictionary_record(dictionary, lang: Optional[str]) -> Dict[str, Any]:
    """What a file records about one dictionary: language, size, nspecial, fingerprint."""
    return {
        "lang": lang,
        "size": len(dictionary),
        "nspecial": dictionary.nspecial,
        "sha256": dictionary_fingerprint(dictionary),
    }


def frequent_targets(target_counts: np.ndarray, nspecial: int, n_frequent: int) -> np.ndarray:
    """Ids of the ``n_frequent`` most frequent non-special target tokens (count > 0; ties: lower id first)."""
    counts = np.asarray(target_counts, dtype=np.int64).copy()
    counts[:nspecial] = 0
    order = np.lexsort((np.arange(len(counts)), -counts))  # by count descending, then id ascending
    order = order[counts[order] > 0]
    return order[:n_frequent]


def save(
    path: str, best_targets: np.ndarray, best_probs: np.ndarray, target_counts: np.ndarray, header: Dict[str, Any]
) -> None:
    """Write a shortlist file (atomically: a partial write never has the final name)."""
    header = dict(header, format=FORMAT, version=VERSION)
    header_bytes = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            header=header_bytes,
            best_targets=best_targets.astype(np.int32),
            best_probs=best_probs.astype(np.float32),
            target_counts=target_counts.astype(np.int64),
        )
    os.replace(tmp, path)


def read(path: str) -> Dict[str, Any]:
    """The header (dict) and arrays of a shortlist file, checked for format and version only.

    Raises ShortlistError for a missing, truncated or foreign file or an unsupported version."""
    if not os.path.isfile(path):
        raise ShortlistError(f"shortlist file {path!r} does not exist; {BUILD_HINT}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("header",) + ARRAYS if k not in npz.files]
            if missing:
                raise ShortlistError(
                    f"{path!r} is not an fconv-ext shortlist file (no {', '.join(missing)}); {BUILD_HINT}"
                )
            content = {k: npz[k] for k in ("header",) + ARRAYS}
        header = json.loads(content.pop("header").tobytes().decode("utf-8"))
    except ShortlistError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        # np.load of a non-zip file falls back to pickle, refused: ValueError; a cut zip: BadZipFile/EOFError
        raise ShortlistError(
            f"shortlist file {path!r} is truncated or corrupt ({type(e).__name__}: {e}); rebuild it ({BUILD_HINT})"
        ) from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ShortlistError(
            f"{path!r} is not an fconv-ext shortlist file (format "
            f"{header.get('format') if isinstance(header, dict) else None!r}); {BUILD_HINT}"
        )
    if header.get("version") != VERSION:
        raise ShortlistError(
            f"shortlist file {path!r} has format version {header.get('version')!r}; this "
            f"fconv-ext reads version {VERSION}: rebuild it with this version's "
            "fconv-ext-shortlist (or use the fconv-ext that wrote it)"
        )
    content["header"] = header
    return content


class Shortlist:
    """A loaded shortlist for one pair of dictionaries; :meth:`candidates` gives a batch's target ids.

    Attributes: ``n_best``, ``n_frequent`` (the values in use), ``metadata`` (the file's header: languages,
    dictionary sizes and fingerprints, aligner and options, corpus, date), ``path``."""

    def __init__(
        self,
        best_targets: torch.Tensor,
        frequent: torch.Tensor,
        tgt_size: int,
        tgt_nspecial: int,
        n_best: int,
        n_frequent: int,
        metadata: Dict[str, Any],
        path: Optional[str] = None,
    ):
        self.n_best = n_best
        self.n_frequent = n_frequent
        self.metadata = metadata
        self.path = path
        self.tgt_size = tgt_size
        # len(src_dict) x n_best target ids; "no entry" (-1) becomes 0 (BOS), a special that is always a
        # candidate anyway, so candidates() needs no filtering
        self._table = best_targets.long().clamp(min=0)
        base = torch.zeros(tgt_size, dtype=torch.bool)
        base[:tgt_nspecial] = True
        base[frequent.long()] = True
        self._base_mask = base  # tgt_size: specials + the frequent set
        self._on_device: Dict[torch.device, Any] = {}

    @classmethod
    def load(
        cls, path: str, src_dict, tgt_dict, n_best: Optional[int] = None, n_frequent: Optional[int] = None
    ) -> "Shortlist":
        """Read ``path`` for a model with these fairseq Dictionaries.

        ``n_best`` (at most the file's) and ``n_frequent`` (any) override what the file was built with.
        Raises ShortlistError, naming the file and what to do, for a missing, truncated or corrupt file, an
        unsupported format version, or a file built for other dictionaries."""
        content = read(path)
        header = content["header"]
        for side, dictionary in (("source", src_dict), ("target", tgt_dict)):
            rec = header.get(side) or {}
            if rec.get("sha256") != dictionary_fingerprint(dictionary) or rec.get("size") != len(dictionary):
                raise ShortlistError(
                    f"shortlist {path!r} was built for another {side} dictionary ({rec.get('lang')}, "
                    f"{rec.get('size')} symbols, sha256 {str(rec.get('sha256'))[:12]}...) than the model's "
                    f"({len(dictionary)} symbols, sha256 {dictionary_fingerprint(dictionary)[:12]}...); rebuild "
                    f"it from the data directory the model was trained on ({BUILD_HINT})"
                )
        table, counts = content["best_targets"], content["target_counts"]
        built_n = header.get("n_best")
        built_n = built_n if isinstance(built_n, int) else -1  # a bad header fails the shape check below
        if (
            table.ndim != 2
            or table.shape != (len(src_dict), built_n)
            or counts.shape != (len(tgt_dict),)
            or content["best_probs"].shape != table.shape
            or table.size
            and (table.min() < -1 or table.max() >= len(tgt_dict))
        ):
            raise ShortlistError(
                f"shortlist file {path!r} is corrupt (arrays do not match its header or the "
                f"dictionaries); rebuild it ({BUILD_HINT})"
            )
        if n_best is None:
            n_best = built_n
        if not 0 <= n_best <= built_n:
            raise ShortlistError(
                f"n_best={n_best} asked of shortlist {path!r}, built with n_best={built_n}: "
                f"use at most {built_n}, or rebuild with --n-best {n_best}"
            )
        if n_frequent is None:
            n_frequent = header.get("n_frequent") if isinstance(header.get("n_frequent"), int) else 0
        if n_frequent < 0:
            raise ShortlistError(f"n_frequent must be >= 0, got {n_frequent}")
        frequent = frequent_targets(counts, tgt_dict.nspecial, n_frequent)
        return cls(
            torch.from_numpy(np.ascontiguousarray(table[:, :n_best])),
            torch.from_numpy(frequent),
            len(tgt_dict),
            tgt_dict.nspecial,
            n_best,
            n_frequent,
            header,
            path,
        )

    def _tensors(self, device: torch.device):
        """(table, base mask) on ``device``, copied once per device."""
        if device not in self._on_device:
            self._on_device[device] = (self._table.to(device), self._base_mask.to(device))
        return self._on_device[device]

    def candidates(self, src_tokens: torch.Tensor) -> torch.Tensor:
        """Target ids to score for a batch: 1-D LongTensor on ``src_tokens.device``, sorted ascending and
        unique; every special (``cands[i] == i`` for ``i < nspecial``), the frequent set, and the best
        ``n_best`` targets of every source token in ``src_tokens`` (B x S, any padding; union over the batch).
        Source tokens without an entry (specials, unknown, unseen in training) add nothing."""
        table, base = self._tensors(src_tokens.device)
        present = torch.unique(src_tokens)  # sorted
        if present.numel() and (int(present[0]) < 0 or int(present[-1]) >= table.size(0)):
            raise ValueError(
                f"source token ids must lie in [0, {table.size(0)}) (the source dictionary the "
                f"shortlist was loaded for), got {int(present[0])}..{int(present[-1])}"
            )
        mask = base.clone()
        mask[table[present].view(-1)] = True  # (n_present * n_best) target ids
        return mask.nonzero().view(-1)

    def __repr__(self):
        return (
            f"Shortlist({self.path!r}, n_best={self.n_best}, n_frequent={self.n_frequent}, "
            f"target vocabulary {self.tgt_size})"
        )


_LOADED: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


def shortlist_for(model) -> Optional[Shortlist]:
    """The vocabulary shortlist ``model`` decodes with: the file of its ``shortlist`` option
    (``model.shortlist_path``; None: the whole vocabulary), checked against the model's dictionaries
    and loaded once per model and file.  Raises ShortlistError for a bad file."""
    path = getattr(model, "shortlist_path", None)
    if not path:
        return None
    entry = _LOADED.get(model)
    if entry is None or entry[0] != path:
        shortlist = Shortlist.load(path, model.encoder.dictionary, model.decoder.dictionary)
        logger.info(
            f"vocabulary shortlist {path} (best {shortlist.n_best} translations per source word, "
            f"{shortlist.n_frequent} most frequent words): used by FConvBeamSearch"
        )
        entry = (path, shortlist)
        _LOADED[model] = entry
    return entry[1]
