"""The model behind the server: fairseq's hub interface on an fconv_ext checkpoint.

Text goes in and out exactly as with ``hub.translate``: :meth:`Translator.encode` is ``hub.encode``
(tokenizer, BPE, dictionary), :meth:`Translator.decode_batch` is ``hub.generate`` on a list of
sentences followed by ``hub.decode`` (BPE removed, detokenized) of each n-best hypothesis.  The
only difference: a sentence longer than the token limit is cut here, with a warning, before it
reaches the model (as ``--task fconv_translation`` cuts it for fairseq-interactive), so that every
checkpoint's task behaves the same.

A directory written by ``fconv-ext-export`` is served by :class:`ExportedTranslator` instead: the
same methods on ``fconv_runtime`` (ONNX Runtime or AOTInductor graphs, its own text pipeline and
beam search), without the per-layer attention, which needs the PyTorch model.

Every method but :meth:`encode` runs on the batcher's decoding thread.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .limits import RequestError

logger = logging.getLogger(__name__)

#: English names of the language codes LibreTranslate's /languages lists (others show their code)
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "ca": "Catalan",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "fi": "Finnish",
    "fr": "French",
    "hu": "Hungarian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sv": "Swedish",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "zh": "Chinese",
}


@dataclass
class Hypothesis:
    text: str  # detokenized translation
    tokens: torch.Tensor  # T target token ids, EOS last
    score: float  # fairseq's length-normalised log-probability


def languages(source_lang: str, target_lang: str) -> List[Dict[str, Any]]:
    """LibreTranslate's ``/languages``: each language with the codes it translates into."""

    def entry(code: str, targets: List[str]) -> Dict[str, Any]:
        return {"code": code, "name": LANGUAGE_NAMES.get(code, code), "targets": targets}

    return [entry(source_lang, [target_lang]), entry(target_lang, [])]


def is_export(path: str) -> bool:
    """Whether ``path`` is a directory written by fconv-ext-export."""
    return os.path.isfile(os.path.join(path, "manifest.json"))


def resolve_checkpoint(path: str) -> Tuple[str, str]:
    """(model directory, checkpoint file name) of a checkpoint file, or of a directory holding
    ``model.pt`` (a converted or published model) or ``checkpoint_best.pt``/``checkpoint_last.pt``."""
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if os.path.isdir(path):
        for name in ("model.pt", "checkpoint_best.pt", "checkpoint_last.pt"):
            if os.path.isfile(os.path.join(path, name)):
                return path, name
        raise FileNotFoundError(
            f"{path} holds no model.pt, checkpoint_best.pt or checkpoint_last.pt: give the checkpoint file"
        )
    raise FileNotFoundError(f"no checkpoint file or directory {path}")


class Translator:
    """Encodes, decodes in batches, and shows attention, for one hub interface."""

    has_attention = True  # layer_attention works

    def __init__(
        self,
        hub,
        beam: int = 5,
        max_sentence_tokens: Optional[int] = None,
        max_len_a: float = 0.0,
        max_len_b: int = 200,
    ):
        hub.eval()
        self.hub = hub
        self.beam = beam
        # a translation has at most max_len_a * source length + max_len_b tokens (fairseq's defaults: 0, 200)
        self.max_len = {"max_len_a": max_len_a, "max_len_b": max_len_b}
        # The batcher decides what is decoded together: hub.generate must not split its batches
        # again by the training run's --max-tokens / --batch-size stored in the checkpoint.
        hub.cfg.dataset.max_tokens = None
        hub.cfg.dataset.batch_size = None
        model_limit = hub.max_positions[0] if isinstance(hub.max_positions, tuple) else hub.max_positions
        self.max_sentence_tokens = min(max_sentence_tokens or model_limit, model_limit)
        self.source_lang: str = hub.task.cfg.source_lang
        self.target_lang: str = hub.task.cfg.target_lang

    @classmethod
    def load(
        cls,
        checkpoint: str,
        data: str,
        *,
        source_lang: Optional[str] = None,
        target_lang: Optional[str] = None,
        tokenizer: Optional[str] = None,
        bpe: Optional[str] = None,
        bpe_codes: Optional[str] = None,
        beam: int = 5,
        max_sentence_tokens: Optional[int] = None,
        max_len_a: float = 0.0,
        max_len_b: int = 200,
    ) -> "Translator":
        """``FConvExtModel.from_pretrained`` on ``checkpoint`` (a file or a model directory) with
        the dictionaries of ``data``, as the README loads a model."""
        from ..models import FConvExtModel

        model_dir, checkpoint_file = resolve_checkpoint(checkpoint)
        options = {
            "source_lang": source_lang,
            "target_lang": target_lang,
            "tokenizer": tokenizer,
            "bpe": bpe,
            "bpe_codes": bpe_codes,
        }
        hub = FConvExtModel.from_pretrained(
            model_dir,
            checkpoint_file=checkpoint_file,
            data_name_or_path=data,
            **{k: v for k, v in options.items() if v is not None},
        )
        return cls(hub, beam=beam, max_sentence_tokens=max_sentence_tokens, max_len_a=max_len_a, max_len_b=max_len_b)

    def languages(self) -> List[Dict[str, Any]]:
        return languages(self.source_lang, self.target_lang)

    # -- on the event loop: cheap, no model ------------------------------------------------
    def encode(self, sentence: str) -> Tuple[torch.Tensor, bool]:
        """Source token ids of a sentence (S, EOS last) and whether it was cut to the limit."""
        tokens = self.hub.encode(sentence)
        limit = self.max_sentence_tokens
        if tokens.numel() <= limit:
            return tokens, False
        logger.warning(
            "a sentence of %d tokens is longer than the limit of %d: translating its first %d tokens",
            tokens.numel(),
            limit,
            limit - 1,
        )
        return torch.cat([tokens[: limit - 1], tokens.new_tensor([self.hub.src_dict.eos()])]), True

    # -- on the decoding thread ------------------------------------------------------------
    def decode_batch(self, sources: List[torch.Tensor]) -> List[List[Hypothesis]]:
        """The n-best list (``beam`` hypotheses, best first) of each sentence, decoded as one batch."""
        with torch.inference_mode():
            nbest = self.hub.generate(sources, beam=self.beam, **self.max_len)
        return [
            [Hypothesis(self.hub.decode(h["tokens"]), h["tokens"], float(h["score"])) for h in hypos] for hypos in nbest
        ]

    def layer_attention(self, source: torch.Tensor, hypothesis: torch.Tensor) -> Dict[str, Any]:
        """Each attention layer's attention for ``hypothesis`` given ``source``, by words.

        One teacher-forced forward pass of the decoder over the whole hypothesis
        (:func:`fconv_plugin.cli.plots.layer_attention`: forward hooks on the decoder's
        attention modules, each giving T x S).  Subword pieces are merged into words: a word's
        column is the sum of its pieces' columns (attention paid to the word), its row the mean of
        its pieces' rows (the word's steps)."""
        from ..cli.plots import layer_attention

        model = self.hub.models[0]
        with torch.inference_mode():
            per_layer = layer_attention(model, source, hypothesis)  # [T x S] per attention layer
        src_pieces = [self.hub.src_dict[i] for i in source.tolist()]
        tgt_pieces = [self.hub.tgt_dict[i] for i in hypothesis.tolist()]
        src_words, src_groups = merge_subwords(src_pieces)
        tgt_words, tgt_groups = merge_subwords(tgt_pieces)
        layers = [i + 1 for i, att in enumerate(model.decoder.attention) if att is not None]
        maps = []
        for layer, att in zip(layers, per_layer):
            by_source = torch.stack([att[:, g].sum(1) for g in src_groups], 1)  # T x S_words
            by_words = torch.stack([by_source[g].mean(0) for g in tgt_groups], 0)  # T_words x S_words
            maps.append({"layer": layer, "weights": [[round(v, 4) for v in row] for row in by_words.tolist()]})
        return {"source": src_words, "target": tgt_words, "layers": maps}


def merge_subwords(pieces: Sequence[str], continuation: str = "@@") -> Tuple[List[str], List[List[int]]]:
    """Words of subword-nmt pieces (``"cann@@", "ot"`` -> ``"cannot"``) and the piece indices of
    each word; pieces of other BPEs stay as they are."""
    words: List[str] = []
    groups: List[List[int]] = []
    open_word = False
    for i, piece in enumerate(pieces):
        text = piece[: -len(continuation)] if piece.endswith(continuation) else piece
        if open_word:
            words[-1] += text
            groups[-1].append(i)
        else:
            words.append(text)
            groups.append([i])
        open_word = piece.endswith(continuation)
    return words, groups


class ExportedTranslator:
    """:class:`Translator`'s methods on a directory written by ``fconv-ext-export``, through
    ``fconv_runtime`` (its text pipeline: Moses and subword-nmt as recorded in the manifest; its beam
    search over the exported graphs).  No per-layer attention: that needs the PyTorch model."""

    has_attention = False

    def __init__(
        self,
        directory: str,
        beam: int = 5,
        threads: Optional[int] = None,
        max_sentence_tokens: Optional[int] = None,
        max_len_a: float = 0.0,
        max_len_b: int = 200,
    ):
        from fconv_runtime import Translator as Runtime

        self.runtime = Runtime(directory, threads=threads)
        self.beam = beam
        self.max_len = {"max_len_a": max_len_a, "max_len_b": max_len_b}
        self.source_lang: str = self.runtime.manifest["source_lang"]
        self.target_lang: str = self.runtime.manifest["target_lang"]
        model_limit = self.runtime.max_source_positions
        self.max_sentence_tokens = min(max_sentence_tokens or model_limit, model_limit)

    def languages(self) -> List[Dict[str, Any]]:
        return languages(self.source_lang, self.target_lang)

    def encode(self, sentence: str) -> Tuple[torch.Tensor, bool]:
        """Source token ids (S, EOS last) and whether they were cut to ``max_sentence_tokens`` here (the
        runtime cuts at the model's positions itself, with its own warning)."""
        from fconv_runtime.artifact import EOS

        ids = self.runtime.encode(sentence)
        if len(ids) <= self.max_sentence_tokens:
            return torch.tensor(ids), False
        logger.warning(
            "a sentence of %d tokens is longer than the limit of %d: translating its first %d tokens",
            len(ids),
            self.max_sentence_tokens,
            self.max_sentence_tokens - 1,
        )
        return torch.tensor(ids[: self.max_sentence_tokens - 1] + [EOS]), True

    def decode_batch(self, sources: List[torch.Tensor]) -> List[List[Hypothesis]]:
        import numpy as np
        from fconv_runtime.artifact import EOS, PAD
        from fconv_runtime.search import beam_search

        width = max(s.numel() for s in sources)
        src_tokens = np.full((len(sources), width), PAD, dtype=np.int64)  # B x S, left-padded as fairseq's
        for row, source in enumerate(sources):
            src_tokens[row, width - source.numel() :] = source.numpy()
        finalized = beam_search(
            self.runtime.backend, src_tokens, self.beam, self.runtime.max_target_positions, **self.max_len
        )
        return [
            [
                Hypothesis(self.runtime.decode(tokens), torch.tensor(list(tokens) + [EOS]), float(score))
                for score, tokens in hypotheses
            ]
            for hypotheses in finalized
        ]

    def layer_attention(self, source: torch.Tensor, hypothesis: torch.Tensor) -> Dict[str, Any]:
        raise RequestError(
            501, "attention is not available for an exported model: serve its PyTorch checkpoint to see it"
        )
