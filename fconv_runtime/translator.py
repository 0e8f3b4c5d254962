"""Raw text in, translations out, through an exported model (no torch for onnx, no fairseq ever).

    from fconv_runtime import Translator
    translator = Translator("exported/")                  # checks the manifest and every checksum
    translator.translate(["Hello world."], beam=5)         # -> ["Hallo Welt."]
    translator.translate_nbest(lines, beam=5, nbest=3)     # -> per line, [Translation(text, score, tokens), ...]

The text pipeline is fairseq's hub interface's: Moses tokenization (sacremoses, when the export recorded
``--tokenizer moses``), subword-nmt BPE (when it carries ``bpe.codes``), the source dictionary (unknown
words -> ``<unk>``, EOS appended); on the way back the target symbols, BPE joined (``@@ ``), Moses
detokenization.  Without a tokenizer and BPE codes the input is taken as tokenized, BPE'd text and the
output is the symbols joined by spaces (what fairseq-generate prints as ``H-`` lines).

With a vocabulary shortlist (``fconv-ext-export --shortlist``) each batch is scored over its candidate
words only: the specials, the frequent words and the best translations of its source words.

Sentences are sorted by length for batching (fewer padded positions) and returned in input order;
empty lines give empty translations without decoding; a sentence longer than the encoder's positions
is truncated (its first ``max_source_positions - 1`` tokens and EOS) with a warning.
"""

import logging
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from .artifact import EOS, PAD, UNK, ArtifactError, load_manifest, read_dictionary
from .backends import load_backend
from .search import beam_search

logger = logging.getLogger("fconv_runtime")


class Translation(NamedTuple):
    text: str
    score: float  # the length-normalised log-probability (natural log), fairseq's hypothesis score
    tokens: List[int]  # target token ids, without the final EOS


class Translator:
    def __init__(self, directory: str, threads: Optional[int] = None, verify: bool = True):
        self.directory = directory
        self.manifest: Dict[str, Any] = load_manifest(directory, verify=verify)
        model = self.manifest["model"]
        dictionaries = self.manifest["dictionaries"]
        self.source_symbols = read_dictionary(os.path.join(directory, dictionaries["source"]))
        self.target_symbols = read_dictionary(os.path.join(directory, dictionaries["target"]))
        self.backend = load_backend(directory, self.manifest, threads)
        for side, symbols, expected in (
            ("source", self.source_symbols, model["source_vocabulary"]),
            ("target", self.target_symbols, self.backend.vocabulary),
        ):
            if len(symbols) != expected:
                raise ArtifactError(
                    f"the {side} dictionary {dictionaries[side]!r} has {len(symbols)} symbols but the exported graph's "
                    f"embedding has {expected} rows: it is not the dictionary the model was trained with; export "
                    "again with the model's data directory (--data)"
                )
        self.source_index = {symbol: i for i, symbol in enumerate(self.source_symbols)}
        self.max_source_positions = int(model["max_source_positions"])
        self.max_target_positions = int(model["max_target_positions"])
        self._tokenizer, self._detokenizer = self._moses(self.manifest.get("tokenizer") or {})
        self._bpe = self._subword_nmt(self.manifest.get("bpe") or {})
        self._shortlist = self._shortlist_tables(self.manifest.get("shortlist") or {})

    # ------------------------------------------------------------------ text pipeline

    def _moses(self, settings: Dict[str, Any]):
        if settings.get("name", "none") == "none":
            return None, None
        if settings["name"] != "moses":
            raise ArtifactError(
                f"unknown tokenizer {settings['name']!r} in the manifest (this runtime knows moses, none)"
            )
        from sacremoses import MosesDetokenizer, MosesTokenizer

        tokenizer = MosesTokenizer(lang=settings["source_lang"])
        detokenizer = MosesDetokenizer(lang=settings["target_lang"])
        escape = bool(settings.get("escape", True))
        return (
            lambda line: tokenizer.tokenize(line, return_str=True, escape=escape),
            lambda line: detokenizer.detokenize(line.split()),
        )

    def _subword_nmt(self, settings: Dict[str, Any]):
        if not settings:
            return None
        from subword_nmt.apply_bpe import BPE

        with open(os.path.join(self.directory, settings["codes"]), encoding="utf-8") as f:
            return BPE(f, separator=settings.get("separator", "@@"))

    def _shortlist_tables(self, settings: Dict[str, Any]):
        """(table: source id -> its n_best target ids, base: the specials and frequent words) or None."""
        if not settings:
            return None
        with np.load(os.path.join(self.directory, settings["file"]), allow_pickle=False) as arrays:
            table, base = arrays["table"], arrays["base"]
        if table.shape[0] != len(self.source_symbols) or base.shape != (len(self.target_symbols),):
            raise ArtifactError(
                f"{settings['file']} does not match the dictionaries ({table.shape[0]} x "
                f"{base.shape[0]} entries for {len(self.source_symbols)} x {len(self.target_symbols)} "
                "symbols): export again"
            )
        return table, base

    def batch_words(self, src_tokens: np.ndarray, beam: int) -> Optional[np.ndarray]:
        """The words a batch is scored over with a shortlist (None: the whole vocabulary): the specials,
        the frequent words and the best translations of the batch's source words, sorted.  A set too
        small for the beam (fewer than 2 * beam + 1 words besides pad) is the whole vocabulary, as
        FConvBeamSearch then decodes with fairseq's generator."""
        if self._shortlist is None:
            return None
        table, base = self._shortlist
        mask = base.copy()
        mask[table[np.unique(src_tokens)].reshape(-1)] = True
        words = np.flatnonzero(mask).astype(np.int64)
        if len(words) - 1 < 2 * beam:
            return np.arange(len(self.target_symbols), dtype=np.int64)
        return words

    def encode(self, line: str) -> List[int]:
        """A raw line -> source token ids ending in EOS (truncated to the encoder's positions)."""
        if self._tokenizer is not None:
            line = self._tokenizer(line)
        if self._bpe is not None:
            line = self._bpe.process_line(line)
        ids = [self.source_index.get(word, UNK) for word in line.split()]
        if len(ids) + 1 > self.max_source_positions:
            logger.warning(
                f"a sentence of {len(ids)} tokens is longer than the model's {self.max_source_positions} "
                f"source positions: translating its first {self.max_source_positions - 1}"
            )
            ids = ids[: self.max_source_positions - 1]
        return ids + [EOS]

    def decode(self, tokens: Sequence[int]) -> str:
        """Target ids (no EOS) -> text."""
        text = " ".join(self.target_symbols[t] for t in tokens if t != EOS)
        if self._bpe is not None:
            text = (text + " ").replace(self._bpe.separator + " ", "").rstrip()
        if self._detokenizer is not None:
            text = self._detokenizer(text)
        return text

    # ------------------------------------------------------------------ decoding

    def translate(self, lines: Sequence[str], beam: int = 5, batch_size: int = 64, **options) -> List[str]:
        """The best translation of each line."""
        return [hyps[0].text if hyps else "" for hyps in self.translate_nbest(lines, beam, 1, batch_size, **options)]

    def translate_nbest(
        self,
        lines: Sequence[str],
        beam: int = 5,
        nbest: int = 1,
        batch_size: int = 64,
        max_len_a: float = 0.0,
        max_len_b: int = 200,
        lenpen: float = 1.0,
    ) -> List[List[Translation]]:
        """The ``nbest`` best translations of each line (``[]`` for an empty line), best first."""
        if not 1 <= nbest <= beam:
            raise ValueError(f"nbest must be between 1 and the beam ({beam}), not {nbest}")
        results: List[List[Translation]] = [[] for _ in lines]
        encoded = {i: self.encode(line) for i, line in enumerate(lines) if line.strip()}
        order = sorted(encoded, key=lambda i: len(encoded[i]))  # stable: equal lengths keep input order
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            src_tokens = np.full((len(batch), width), PAD, dtype=np.int64)  # B x S, left-padded as fairseq's
            for row, i in enumerate(batch):
                src_tokens[row, width - len(encoded[i]) :] = encoded[i]
            finalized = beam_search(
                self.backend,
                src_tokens,
                beam,
                self.max_target_positions,
                max_len_a=max_len_a,
                max_len_b=max_len_b,
                lenpen=lenpen,
                words=self.batch_words(src_tokens, beam),
            )
            for i, hypotheses in zip(batch, finalized):
                results[i] = [Translation(self.decode(tokens), score, tokens) for score, tokens in hypotheses[:nbest]]
        return results
