"""The ``fconv_translation`` task: fairseq's translation task with validation BLEU on by
default (ROUGE-1/2/L with ``--eval-rouge``, for summarization), a clear error for examples
longer than the model accepts, and the candidate generation + sentence cost that
sequence-level training (``sequence_risk``) needs.

    fairseq-train DATA --user-dir fconv_plugin --task fconv_translation --arch fconv_ext_iwslt_de_en \\
        --best-checkpoint-metric bleu --maximize-best-checkpoint-metric ...
"""

import inspect
import json
import logging
from argparse import Namespace
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq import metrics, utils
from fairseq.data import data_utils, encoders
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..rouge import ROUGE_TYPES, build_scorer, sentence_rouge
from ..serving.shortlist import shortlist_for

logger = logging.getLogger(__name__)


@dataclass
class FConvTranslationConfig(TranslationConfig):
    no_eval_bleu: bool = field(
        default=False,
        metadata={"help": "do not decode the validation set and report BLEU (on by default)"},
    )
    eval_bleu_args: Optional[str] = field(
        default='{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}',
        metadata={
            "help": "generation options for validation decoding (BLEU and ROUGE), as JSON, e.g. "
            '\'{"beam": 1}\'; headlines: \'{"beam": 5, "max_len_a": 0, "max_len_b": 30}\''
        },
    )
    eval_rouge: bool = field(
        default=False,
        metadata={
            "help": "also decode the validation set and report ROUGE-1/2/L F1 (rouge-score, Porter "
            "stemmer) as rouge1/rouge2/rougeL; pick checkpoints with --best-checkpoint-metric rougeL "
            "--maximize-best-checkpoint-metric (summarization: add --no-eval-bleu)"
        },
    )
    eval_bleu_detok: str = field(
        default="moses",
        metadata={
            "help": "detokenizer applied before scoring ('moses' = sacremoses for the target language; 'space' = none)"
        },
    )
    eval_bleu_remove_bpe: Optional[str] = field(
        default="@@ ",
        metadata={
            "help": "BPE continuation marker removed before scoring (subword-nmt: '@@ ')",
            "argparse_const": "@@ ",
        },
    )
    skip_long_examples: bool = field(
        default=False,
        metadata={
            "help": "drop (with a warning) training/validation examples longer than the model's "
            "max positions instead of failing before training"
        },
    )

    shortlist_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "decode fconv_ext models with this vocabulary shortlist (fconv-ext-shortlist; "
            "docs/shortlists.md); the same as --model-overrides \"{'model': {'shortlist': 'FILE'}}\". "
            "Inference only: training and validation loss never use it"
        },
    )


def _too_long_message(split, dataset, index, max_positions) -> str:
    return (
        f"the {split} split has an example (#{index}) of {tuple(int(n) for n in dataset.size(index))} "
        "(source, target) tokens, "
        f"longer than the model accepts: max positions {max_positions}. Either raise the limit "
        "(--max-source-positions / --max-target-positions, when training a new model), or skip/truncate "
        "long examples (--skip-long-examples for training data, --skip-invalid-size-inputs-valid-test "
        "for validation/test data, --truncate-source to cut sources)."
    )


@register_task("fconv_translation", dataclass=FConvTranslationConfig)
class FConvTranslationTask(TranslationTask):
    cfg: FConvTranslationConfig

    def __init__(self, cfg: FConvTranslationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        cfg.eval_bleu = not cfg.no_eval_bleu
        self.tokenizer = None
        self.rouge_scorer = None  # built for --eval-rouge, or by the first ROUGE-L sequence cost
        self._model_max_positions = None  # known once build_model has run

    # -- validation BLEU ------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        model = super(TranslationTask, self).build_model(cfg, from_checkpoint)
        if self.cfg.shortlist_file:
            if not hasattr(model, "shortlist_path"):
                raise ValueError(
                    f"--shortlist-file: {type(model).__name__} cannot decode with a vocabulary "
                    "shortlist; only fconv_ext translation models can (drop --shortlist-file)"
                )
            model.shortlist_path = self.cfg.shortlist_file
            shortlist_for(model)  # a file that does not fit the dictionaries is refused now, not at decoding
        self._model_max_positions = model.max_positions()
        for split in list(self.datasets):
            self._check_split_fits(split)
        self.tokenizer = self._build_detokenizer()
        if self.cfg.eval_bleu or self.cfg.eval_rouge:
            gen_args = json.loads(self.cfg.eval_bleu_args or "{}")
            self.sequence_generator = self.build_generator([model], Namespace(**gen_args))
        if self.cfg.eval_bleu:
            logger.info(f"validation BLEU: {self.bleu_signature()} (generation: {gen_args})")
        if self.cfg.eval_rouge:
            self.rouge_scorer = build_scorer(stemmer=True)
            logger.info(f"validation ROUGE-1/2/L F1: rouge-score, Porter stemmer (generation: {gen_args})")
        return model

    def _build_detokenizer(self):
        args = json.loads(self.cfg.eval_bleu_detok_args or "{}")
        if self.cfg.eval_bleu_detok == "moses":
            args.setdefault("source_lang", self.cfg.target_lang)  # only the target side is detokenized
            args.setdefault("target_lang", self.cfg.target_lang)
        return encoders.build_tokenizer(Namespace(tokenizer=self.cfg.eval_bleu_detok, **args))

    def bleu_signature(self) -> str:
        from sacrebleu.metrics import BLEU

        tokenize = "none" if self.cfg.eval_tokenized_bleu else BLEU.TOKENIZER_DEFAULT
        bleu = BLEU(tokenize=tokenize, smooth_method="exp")
        bleu.corpus_score(["x"], [["x"]])  # the signature names the number of references: one
        return str(bleu.get_signature())

    # -- text of a hypothesis/reference, as scored --------------------------------
    def detokenize(self, tokens: torch.Tensor, escape_unk: bool = False) -> str:
        """Token ids -> the text that BLEU scores: BPE removed, detokenized.  Unknown
        words become a marker that never matches the other side."""
        text = self.tgt_dict.string(
            utils.strip_pad(tokens, self.tgt_dict.pad()).int().cpu(),
            self.cfg.eval_bleu_remove_bpe,
            unk_string=("UNKNOWNTOKENINREF" if escape_unk else "UNKNOWNTOKENINHYP"),
        )
        return self.tokenizer.decode(text) if self.tokenizer else text

    def _decode_validation(self, sample, model):
        """Hypotheses and references of a validation batch, as the metrics score them."""
        gen_out = self.inference_step(self.sequence_generator, [model], sample, prefix_tokens=None)
        hyps = [self.detokenize(g[0]["tokens"]) for g in gen_out]
        refs = [self.detokenize(t, escape_unk=True) for t in sample["target"]]
        if self.cfg.eval_bleu_print_samples:
            logger.info("example hypothesis: " + hyps[0])
            logger.info("example reference: " + refs[0])
        return hyps, refs

    def valid_step(self, sample, model, criterion):
        """The loss, then (once per batch, shared by both metrics) decoding for BLEU and/or
        ROUGE.  Every statistic is a plain number so that workers sum them."""
        loss, sample_size, logging_output = super(TranslationTask, self).valid_step(sample, model, criterion)
        if not (self.cfg.eval_bleu or self.cfg.eval_rouge):
            return loss, sample_size, logging_output
        hyps, refs = self._decode_validation(sample, model)
        if self.cfg.eval_bleu:
            import sacrebleu

            bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none" if self.cfg.eval_tokenized_bleu else "13a")
            logging_output["_bleu_sys_len"] = bleu.sys_len
            logging_output["_bleu_ref_len"] = bleu.ref_len
            for i in range(4):
                logging_output[f"_bleu_counts_{i}"] = bleu.counts[i]
                logging_output[f"_bleu_totals_{i}"] = bleu.totals[i]
        if self.cfg.eval_rouge:
            logging_output["_rouge_n"] = len(hyps)
            for t in ROUGE_TYPES:
                logging_output[f"_{t}_f"] = 0.0
            for hyp, ref in zip(hyps, refs):
                for t, values in sentence_rouge(self.rouge_scorer, hyp, [ref]).items():
                    logging_output[f"_{t}_f"] += values["fmeasure"]
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        """As fairseq's translation task, but every BLEU statistic is its own scalar meter:
        fairseq logs numpy arrays, which end up in checkpoints and make them unreadable for
        torch's weights-only loader ("Unsupported global: numpy...")."""
        super(TranslationTask, self).reduce_metrics(logging_outputs, criterion)
        if self.cfg.eval_rouge:
            self._reduce_rouge(logging_outputs)
        if not self.cfg.eval_bleu:
            return
        keys = [f"_bleu_{kind}_{i}" for kind in ("counts", "totals") for i in range(4)] + [
            "_bleu_sys_len",
            "_bleu_ref_len",
        ]
        sums = {k: float(sum(utils.item(log.get(k, 0)) for log in logging_outputs)) for k in keys}
        if max(sums[f"_bleu_totals_{i}"] for i in range(4)) <= 0:
            return
        for key, value in sums.items():
            metrics.log_scalar("_stat" + key, value, round=None)

        def compute_bleu(meters):
            from sacrebleu.metrics import BLEU

            stat = {k: meters["_stat" + k].sum for k in keys}
            bleu = BLEU.compute_bleu(
                correct=[stat[f"_bleu_counts_{i}"] for i in range(4)],
                total=[stat[f"_bleu_totals_{i}"] for i in range(4)],
                sys_len=int(stat["_bleu_sys_len"]),
                ref_len=int(stat["_bleu_ref_len"]),
                smooth_method="exp",
            )
            return round(bleu.score, 2)

        metrics.log_derived("bleu", compute_bleu)

    @staticmethod
    def _reduce_rouge(logging_outputs) -> None:
        """Mean per-summary ROUGE F1 over the validation set: ``rouge1``, ``rouge2``, ``rougeL``."""
        count = float(sum(utils.item(log.get("_rouge_n", 0)) for log in logging_outputs))
        if count <= 0:
            return
        metrics.log_scalar("_stat_rouge_n", count, round=None)
        for t in ROUGE_TYPES:
            metrics.log_scalar(
                f"_stat_{t}_f", float(sum(utils.item(log.get(f"_{t}_f", 0)) for log in logging_outputs)), round=None
            )
            metrics.log_derived(
                t, lambda meters, t=t: round(meters[f"_stat_{t}_f"].sum / meters["_stat_rouge_n"].sum, 2)
            )

    # -- sequence-level training support (sequence_risk) ---------------------------
    def build_candidate_generator(
        self, model, beam: int, nbest: int, sampling: bool = False, max_len_a: float = 1.2, max_len_b: int = 200
    ):
        """The generator that proposes candidate translations for sequence-level training."""
        args = Namespace(beam=beam, nbest=nbest, sampling=sampling, max_len_a=max_len_a, max_len_b=max_len_b)
        if sampling:
            args.sampling_topk = -1
        return self.build_generator([model], args)

    def sentence_costs(
        self, hypotheses: List[torch.Tensor], reference: torch.Tensor, metric: str = "bleu"
    ) -> List[float]:
        """``1 - sentence BLEU / 100`` (or, with metric ``rougeL``, ``1 - ROUGE-L F1 / 100``) of
        each hypothesis against the reference, on the same detokenized text validation scores."""
        ref = self.detokenize(reference, escape_unk=True)
        if metric == "rougeL":
            if self.rouge_scorer is None:
                self.rouge_scorer = build_scorer(stemmer=True)
            return [
                1.0 - sentence_rouge(self.rouge_scorer, self.detokenize(h), [ref])["rougeL"]["fmeasure"] / 100.0
                for h in hypotheses
            ]
        if metric != "bleu":
            raise ValueError(f"unknown sequence cost {metric!r}: bleu or rougeL")
        import sacrebleu

        return [1.0 - sacrebleu.sentence_bleu(self.detokenize(h), [ref]).score / 100.0 for h in hypotheses]

    # -- inference on raw input (fairseq-interactive, hub interface) ---------------
    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        """Inputs longer than the model's positions are cut to fit, with a warning, so
        that one long line does not stop the others from being translated."""
        limit = self.cfg.max_source_positions
        if self._model_max_positions is not None:
            limit = min(limit, self._model_max_positions[0])
        eos = self.source_dictionary.eos()
        for i, tokens in enumerate(src_tokens):
            if tokens.numel() > limit:
                logger.warning(
                    f"an input of {tokens.numel()} tokens is longer than the model's {limit} "
                    f"positions: translating its first {limit - 1} tokens"
                )
                src_tokens[i] = torch.cat([tokens[: limit - 1], tokens.new_tensor([eos])])
                src_lengths[i] = limit
        return super().build_dataset_for_inference(src_tokens, src_lengths, constraints=constraints)

    # -- exact resume ----------------------------------------------------------------
    def get_batch_iterator(self, dataset, *args, **kwargs):
        """fairseq orders examples (ties between equal lengths broken by a random
        permutation) under ``numpy_seed(seed + epoch)`` of the epoch in which the batches are
        made. An uninterrupted run makes them once, in epoch 1, and reuses them; a run resumed
        at epoch E makes them again with ``seed + E``: same batch sizes, other sentences,
        hence a different model (docs/upstream-problems.md, problem 16).
        Here the order is always made under ``seed + 1``, so resuming at any epoch sees the
        batches the uninterrupted run sees."""
        bound = inspect.signature(super().get_batch_iterator).bind(dataset, *args, **kwargs)
        seed = bound.arguments.get("seed", 1)
        original = dataset.ordered_indices

        def ordered_indices():
            with data_utils.numpy_seed(seed + 1):
                return original()

        dataset.ordered_indices = ordered_indices  # instance attribute, removed below
        try:
            return super().get_batch_iterator(dataset, *args, **kwargs)
        finally:
            del dataset.ordered_indices

    # -- every example fits the model, or a clear error ----------------------------
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        self._check_split_fits(split)

    def _check_split_fits(self, split: str) -> None:
        """Validation splits must fit the model before training starts (fairseq-train loads
        them right after building the model).  The training split is checked when its
        batches are made, also before the first update; test splits when decoding."""
        model_max = getattr(self, "_model_max_positions", None)
        if model_max is None or split == self.cfg.train_subset or split not in self.datasets:
            return
        dataset = self.datasets[split]
        max_positions = utils.resolve_max_positions(self.max_positions(), model_max)
        self.filter_indices_by_size(dataset.ordered_indices(), dataset, max_positions)

    def filter_indices_by_size(self, indices, dataset, max_positions=None, ignore_invalid_inputs=False):
        split = next((name for name, ds in self.datasets.items() if ds is dataset), "given")
        if split == self.cfg.train_subset:  # fairseq always passes True for training data
            ignore_invalid_inputs = self.cfg.skip_long_examples
        else:
            ignore_invalid_inputs = ignore_invalid_inputs or self.cfg.skip_long_examples
        kept, ignored = dataset.filter_indices_by_size(indices, max_positions)
        if len(ignored) > 0:
            if not ignore_invalid_inputs:
                raise ValueError(_too_long_message(split, dataset, ignored[0], max_positions))
            logger.warning(
                f"skipping {len(ignored)} examples of the {split} split longer than max positions "
                f"{max_positions} (first ids: {list(ignored[:10])})"
            )
        return kept
