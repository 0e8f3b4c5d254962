"""fairseq's ``--tokenizer moses_protected``: Moses with program messages' own tokens kept whole.

fairseq's ``--tokenizer moses`` (used by ``fairseq-interactive`` and the hub interface,
``from_pretrained(..., tokenizer="moses")``) writes ``%s`` as ``% s`` and ``C++`` as ``C + +``,
and its detokenizer never joins them again, so raw text translated by a model trained on
the gettext demo's corpus comes back as ``% s kann nicht geöffnet werden``.  This tokenizer is
the one that corpus was prepared with (:mod:`fconv_plugin.data.gettext_corpus`): encoding is
:func:`~fconv_plugin.data.gettext_corpus.tokenizer` (sacremoses with
``PROTECTED_PATTERNS``: printf/Python/brace placeholders, ``C++``, identifiers with
underscores, paths, URLs, ``<file>``), decoding is
:func:`~fconv_plugin.data.gettext_corpus.detokenizer` (sacremoses, then German quotes closed
up: ``» %s «`` -> ``»%s«``)::

    fairseq-interactive DATA --user-dir fconv_plugin --path CHECKPOINT \\
        --tokenizer moses_protected --bpe subword_nmt --bpe-codes CODES \\
        --source-lang en --target-lang de --remove-bpe

    FConvExtModel.from_pretrained(SAVE_DIR, checkpoint_file=..., data_name_or_path=DATA,
                                  source_lang="en", target_lang="de", tokenizer="moses_protected",
                                  bpe="subword_nmt", bpe_codes=CODES)

The name says what it is: Moses with sacremoses' ``protected_patterns``, which cover more
than placeholders (``C++``, paths, identifiers), so not ``moses_placeholders``.
"""

from dataclasses import dataclass, field

from fairseq.data.encoders import register_tokenizer
from fairseq.dataclass import FairseqDataclass

from . import gettext_corpus


@dataclass
class MosesProtectedTokenizerConfig(FairseqDataclass):
    """The languages, as in fairseq's ``MosesTokenizerConfig`` (fairseq fills both from the task's
    ``--source-lang`` / ``--target-lang``)."""

    source_lang: str = field(default="en", metadata={"help": "source language: the Moses rules that split the input"})
    target_lang: str = field(
        default="en",
        metadata={"help": "target language: the Moses rules (and, for de, the quotes closed up) that join the output"},
    )


@register_tokenizer("moses_protected", dataclass=MosesProtectedTokenizerConfig)
class MosesProtectedTokenizer:
    """encode: source text -> Moses tokens (XML-escaped, protected patterns whole); decode: target
    tokens -> text.  fairseq calls encode on the input and decode on the output (after BPE removal)."""

    def __init__(self, cfg: MosesProtectedTokenizerConfig):
        self.cfg = cfg
        self._encode = gettext_corpus.tokenizer(cfg.source_lang)
        self._decode = gettext_corpus.detokenizer(cfg.target_lang)

    def encode(self, x: str) -> str:
        return self._encode(x)

    def decode(self, x: str) -> str:
        return self._decode(x)
