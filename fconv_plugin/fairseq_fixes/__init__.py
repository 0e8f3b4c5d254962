"""Everything that importing ``fconv_plugin`` changes in fairseq and torch, in one place.

Each entry of :data:`FIXES` says what it changes, which upstream problem it works
around, how far it reaches, and how to turn it off.  ``fconv_plugin/__init__.py`` calls
:func:`install_all` once; no installed file is changed, only functions in the running
process are replaced by wrappers (``functools.wraps``: the replaced function is the
wrapper's ``__wrapped__``).  ``python -m fconv_plugin.fairseq_fixes`` prints the table
that README.md shows under "What importing the plugin changes" (a test keeps the two
equal).

Switches: ``FCONV_EXT_NO_<NAME>=1`` (e.g. ``FCONV_EXT_NO_KEEP_LAST_BATCH=1``) in the
environment when the plugin is imported leaves that change out, and fairseq's function
stays as it is; ``FCONV_EXT_NO_FIXES=1`` leaves all of them out.  ``0``, ``false``,
``no``, ``off`` or an empty value count as unset.  ``FCONV_EXT_BEAM_SEARCH=fairseq``
(documented before this module existed) is the same as ``FCONV_EXT_NO_BEAM_SEARCH=1``,
and both are also read each time a generator is built.

Where a change can be limited to this plugin's models or to the command it serves, it
is; each entry's ``scope`` says where it reaches and, when that is the whole process, why.
"""

import functools
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Tuple

ALL_OFF = "FCONV_EXT_NO_FIXES"
logger = logging.getLogger(__name__)
_MARK = "_fconv_ext_fix"  # attribute on each wrapper: the name of the fix that installed it
_UNSET = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Fix:
    name: str
    summary: str  # one line for README.md's table: what changes, and where
    changes: str  # what it changes
    upstream: str  # the problem it works around, with the fairseq issue where one exists
    scope: str  # where it reaches, and why when that is the whole process
    install: Callable[[], None]  # idempotent
    aliases: Tuple[Tuple[str, str], ...] = ()  # (variable, value) pairs that also turn it off
    when_off: str = ""  # what a user gets instead when a switch leaves it out (logged at import)

    @property
    def switch(self) -> str:
        return f"FCONV_EXT_NO_{self.name.upper()}"

    def turned_off_by(self, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
        """The setting that turns this change off, as ``VARIABLE=value`` (None: it is on)."""
        env = os.environ if environ is None else environ
        for var in (ALL_OFF, self.switch):
            if env.get(var, "").strip().lower() not in _UNSET:
                return f"{var}={env[var]}"
        for var, value in self.aliases:
            if env.get(var, "") == value:
                return f"{var}={value}"
        return None

    def disabled(self, environ: Optional[Mapping[str, str]] = None) -> bool:
        return self.turned_off_by(environ) is not None

    def how_to_turn_off(self) -> str:
        return " or ".join([f"`{self.switch}=1`"] + [f"`{var}={value}`" for var, value in self.aliases])


def _wrap(owner, attribute: str, name: str, make_wrapper) -> None:
    """Replace ``owner.attribute`` by ``make_wrapper(original)`` unless this fix already did."""
    original = getattr(owner, attribute)
    if getattr(original, _MARK, None) == name:
        return
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, _MARK, name)
    setattr(owner, attribute, wrapper)


# --- safe_globals ---------------------------------------------------------------------


def _install_safe_globals() -> None:
    import torch

    from ..checkpoint import SAFE_GLOBALS

    torch.serialization.add_safe_globals(SAFE_GLOBALS)


# --- checkpoint_errors ----------------------------------------------------------------


def _install_checkpoint_errors() -> None:
    from fairseq import checkpoint_utils

    from ..checkpoint import checkpoint_error_for

    def make(original):
        def load_checkpoint_to_cpu(path, *args, **kwargs):
            try:
                return original(path, *args, **kwargs)
            except Exception as err:  # re-raised as it is unless torch could not read the file
                replacement = checkpoint_error_for(str(path), err)
                if replacement is None:
                    raise
                raise replacement from None

        return load_checkpoint_to_cpu

    _wrap(checkpoint_utils, "load_checkpoint_to_cpu", "checkpoint_errors", make)


# --- interactive_input ----------------------------------------------------------------


def _interactive_modules() -> List[object]:
    """fairseq_cli.interactive where it is loaded: imported (fairseq-interactive,
    fconv-ext-interactive, code that imported it) or run as ``python -m fairseq_cli.interactive``."""
    found = [sys.modules.get("fairseq_cli.interactive")]
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == "fairseq_cli.interactive":
        found.append(main)
    return [m for m in found if m is not None and callable(getattr(m, "buffered_read", None))]


def _install_interactive_input() -> None:
    from ..cli import robust_input

    def make(original):
        def buffered_read(input, buffer_size):
            return robust_input.buffered_read(input, buffer_size)

        return buffered_read

    for module in _interactive_modules():
        _wrap(module, "buffered_read", "interactive_input", make)


# --- keep_last_batch ------------------------------------------------------------------


def _install_keep_last_batch() -> None:
    import numpy as np
    from fairseq.data import data_utils

    from ..data.batching import with_dropped_tail

    def make(original):
        def batch_by_size(
            indices,
            num_tokens_fn,
            num_tokens_vec=None,
            max_tokens=None,
            max_sentences=None,
            required_batch_size_multiple=1,
            fixed_shapes=None,
        ):
            if not isinstance(indices, np.ndarray):  # as fairseq does; an iterator is read once
                indices = np.fromiter(indices, dtype=np.int64, count=-1)
            batches = original(
                indices,
                num_tokens_fn,
                num_tokens_vec=num_tokens_vec,
                max_tokens=max_tokens,
                max_sentences=max_sentences,
                required_batch_size_multiple=required_batch_size_multiple,
                fixed_shapes=fixed_shapes,
            )
            return batches if fixed_shapes is not None else with_dropped_tail(indices, batches)

        return batch_by_size

    _wrap(data_utils, "batch_by_size", "keep_last_batch", make)


# --- beam_search ----------------------------------------------------------------------


def _is_fconv_ext(model) -> bool:
    from ..models.fconv_ext import FConvExtModel

    return isinstance(model, FConvExtModel)


def _fairseq_generator_reason(models, args, seq_gen_cls) -> Optional[str]:
    """Why ``build_generator`` gives these models fairseq's generator (None: FConvBeamSearch)."""
    switch = _fix("beam_search").turned_off_by()  # also read per call: set after the import
    if switch is not None:
        return switch
    if getattr(args, "score_reference", False):
        return "--score-reference"
    if seq_gen_cls is not None:
        return f"the caller asked for {seq_gen_cls.__name__}"
    if not models:
        return "no models"
    for model in models:
        if not _is_fconv_ext(model):
            return f"model {type(model).__name__} is not an fconv_ext model"
    return None


def _install_beam_search() -> None:
    from fairseq.tasks.fairseq_task import FairseqTask

    from ..serving.beam_search import FConvBeamSearch, FConvBeamSearchWithAlignment, announce, fairseq_generator_message

    def make(original):
        def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
            reason = _fairseq_generator_reason(models, args, seq_gen_cls)
            if reason is None:  # FConvBeamSearch says which generator decodes when it is built
                if getattr(args, "print_alignment", False):
                    seq_gen_cls = FConvBeamSearchWithAlignment
                    extra_gen_cls_kwargs = dict(extra_gen_cls_kwargs or {}, print_alignment=args.print_alignment)
                else:
                    seq_gen_cls = FConvBeamSearch
            generator = original(
                self, models, args, seq_gen_cls=seq_gen_cls, extra_gen_cls_kwargs=extra_gen_cls_kwargs, **kwargs
            )
            if reason is not None:
                announce(fairseq_generator_message(type(generator), reason))
            return generator

        return build_generator

    _wrap(FairseqTask, "build_generator", "beam_search", make)


# --- torchrun -------------------------------------------------------------------------


def _install_torchrun() -> None:
    from fairseq.distributed import utils as distributed_utils

    from ..cli import cpu_distributed

    def make(original):
        def call_main(cfg, main, **kwargs):
            return cpu_distributed.call_main(original, cfg, main, **kwargs)

        return call_main

    _wrap(distributed_utils, "call_main", "torchrun", make)


# --- resume_broadcast -----------------------------------------------------------------


def _install_resume_broadcast() -> None:
    import io

    import torch
    from fairseq.distributed import utils as distributed_utils

    def make(original):
        def _broadcast_object_slow(obj, src_rank, group, dist_device):
            if distributed_utils.get_rank(group) == src_rank:
                return original(obj, src_rank, group, dist_device)  # the sender: fairseq's
            # the receivers: fairseq's protocol (the length, then the bytes), read as fairseq read
            # them before torch 2.6 made weights-only loading the default
            length = torch.LongTensor([0]).to(dist_device)
            distributed_utils.broadcast(length, src=src_rank, group=group)
            buffer = torch.ByteTensor(int(length.item())).to(dist_device)
            distributed_utils.broadcast(buffer, src=src_rank, group=group)
            return torch.load(io.BytesIO(buffer.cpu().numpy()), map_location="cpu", weights_only=False)

        return _broadcast_object_slow

    _wrap(distributed_utils, "_broadcast_object_slow", "resume_broadcast", make)


_ISSUE = "[#{0}](https://github.com/facebookresearch/fairseq/issues/{0})"
_PROBLEM = "[problem {0}](docs/upstream-problems.md#{1})"

FIXES: Tuple[Fix, ...] = (
    Fix(
        name="safe_globals",
        summary=(
            "torch's weights-only loader may rebuild `argparse.Namespace`, "
            "so fairseq `fconv` checkpoints load (process-wide)"
        ),
        changes="torch's weights-only allow-list (`torch.serialization.add_safe_globals`) gets "
        "`argparse.Namespace`: fairseq `fconv` checkpoints load with `weights_only=True`",
        upstream="torch >= 2.6 refuses checkpoints whose config is an `argparse.Namespace` "
        '("Unsupported global"); fairseq '
        + _ISSUE.format(5610)
        + " (upstream's fix "
        + _ISSUE.format(5611).replace("issues", "pull")
        + " turns weights-only loading off); "
        + _PROBLEM.format(2, "2-weights-only-loading-refuses-fairseq-checkpoints"),
        scope="process-wide: torch has one allow-list per process and fairseq calls `torch.load` itself. "
        "It only lets torch read more files (rebuilding a Namespace sets attributes, runs no code); "
        "every other class is still refused",
        install=_install_safe_globals,
    ),
    Fix(
        name="checkpoint_errors",
        summary="an unreadable checkpoint raises `CheckpointError` naming the file and what to do (process-wide)",
        changes="`fairseq.checkpoint_utils.load_checkpoint_to_cpu` (resuming, fairseq-generate, "
        "fairseq-interactive, the hub): a truncated or corrupt file raises `CheckpointError` naming "
        "the file and what to do, still an instance of the error torch raised",
        upstream='torch\'s errors ("PytorchStreamReader failed reading zip archive", `EOFError`) do not name '
        "the file, and a crash while fairseq copies `checkpoint_last.pt` leaves it damaged; "
        "no fairseq issue",
        scope="process-wide, all checkpoints (the model is known only after reading the file): only the "
        "error for a file torch cannot read changes",
        install=_install_checkpoint_errors,
    ),
    Fix(
        name="interactive_input",
        summary=(
            "fairseq-interactive replaces bytes that are not UTF-8 (with a warning) "
            "instead of stopping (fairseq-interactive only)"
        ),
        changes="`fairseq_cli.interactive.buffered_read`: bytes that do not decode become U+FFFD with a "
        "warning naming the line, instead of stopping the run; every input fairseq reads (a file, "
        "stdin, an `io.StringIO` as `sys.stdin`) gives the same lines and `--buffer-size` batches",
        upstream="fairseq reads `--input` with a strict decoder: one stray byte raises `UnicodeDecodeError` "
        "and nothing is translated; "
        + _PROBLEM.format(12, "12-input-that-is-not-utf-8-stops-fairseq-interactive")
        + "; no fairseq issue",
        scope="only where `fairseq_cli.interactive` is loaded when the plugin is imported "
        "(`fairseq-interactive --user-dir`, `fconv-ext-interactive`)",
        install=_install_interactive_input,
    ),
    Fix(
        name="keep_last_batch",
        summary="batching keeps the last `N mod 8` examples that fairseq drops (process-wide, every task)",
        changes="`fairseq.data.data_utils.batch_by_size`: the last batch, which fairseq drops when its size "
        "is not a multiple of `--required-batch-size-multiple` (default 8), is kept; the other "
        "batches are fairseq's",
        upstream="the last `N mod 8` examples in size order (the longest) are never trained on or decoded; "
        "fairseq "
        + _ISSUE.format(5036)
        + ", "
        + _ISSUE.format(5351)
        + "; "
        + _PROBLEM.format(11, "11-batching-drops-the-longest-examples"),
        scope="process-wide, every task and model: batches are made from the data before any model is "
        "involved, and losing examples is wrong for all of them (without the plugin: "
        "`--required-batch-size-multiple 1`)",
        install=_install_keep_last_batch,
    ),
    Fix(
        name="beam_search",
        summary="fconv_ext models decode with `FConvBeamSearch`: fairseq's results, less work (fconv_ext models only)",
        changes="`FairseqTask.build_generator`: fconv_ext models get `FConvBeamSearch` "
        "(`FConvBeamSearchWithAlignment` with `--print-alignment`): fairseq's hypotheses and scores, "
        "less work per step",
        upstream="fairseq's `SequenceGenerator` does vocabulary-wide work each step that cannot change the "
        "result; "
        + _PROBLEM.format(13, "13-beam-search-does-vocabulary-wide-work-that-cannot-change-the-result")
        + "; speed, not a bug",
        scope="only generators whose models are all fconv_ext (not `--score-reference`, not a caller's own "
        "`seq_gen_cls`); other models and tasks get fairseq's generator",
        install=_install_beam_search,
        aliases=(("FCONV_EXT_BEAM_SEARCH", "fairseq"),),
        when_off="every model decodes with fairseq's SequenceGenerator",
    ),
    Fix(
        name="torchrun",
        summary="workers started by torchrun take their rank from it, also on CPUs (torchrun workers only)",
        changes="`fairseq.distributed.utils.call_main`: a worker started by torchrun (its `RANK`, `WORLD_SIZE`, "
        "`MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE` > 1) without `--distributed-init-method` takes its rank "
        "and world size from torchrun (`env://`, the GPU from `LOCAL_RANK`, no processes spawned), also on "
        "CPUs, where the GPU-only `--ddp-backend c10d`/`pytorch_ddp` and `--distributed-backend nccl` become "
        "`legacy_ddp` and `gloo`; a failing worker's traceback goes into torchrun's error report. Without "
        "torchrun, a `--distributed-world-size` above the number of GPUs stops with the torchrun command to "
        "run instead",
        upstream="fairseq reads torchrun's environment only when `--distributed-world-size` is above 1, and its CPU "
        "default is 1: under torchrun every worker trains alone (exit 0, checkpoints overwritten); with "
        "`--distributed-world-size N` it computes `rank % torch.cuda.device_count()` (`ZeroDivisionError` "
        "on CPUs), and without torchrun that option fails on CPUs with an assertion about GPUs; data-parallel "
        "training on CPUs is not supported upstream (fairseq "
        + _ISSUE.format(2879)
        + "); "
        + _PROBLEM.format(9, "9-data-parallel-training-on-cpus"),
        scope="only workers started by torchrun with 2+ workers and no `--distributed-init-method`, and only "
        "`--distributed-world-size` values that cannot run without torchrun; Slurm, TPUs, pipeline "
        "parallelism, an explicit `--distributed-init-method` and single processes take fairseq's own path",
        install=_install_torchrun,
    ),
    Fix(
        name="resume_broadcast",
        summary=(
            "a resumed data-parallel run: ranks > 0 read rank 0's state "
            "as before torch 2.6 (data-parallel resumes only)"
        ),
        changes="`fairseq.distributed.utils._broadcast_object_slow` on the receiving ranks: the training state that "
        "rank 0 read from `checkpoint_last.pt` and sends to the others when data-parallel training resumes "
        "is unpickled as before torch 2.6 (`weights_only=False`); the sending side is fairseq's",
        upstream="the state sent holds the omegaconf `DictConfig` that `load_checkpoint_to_cpu` makes of the "
        "checkpoint's config and fairseq's own `_TensorPlaceholder`s, which the receivers' `torch.load` "
        'refuses under torch >= 2.6\'s weights-only default ("Unsupported global"): every data-parallel '
        "run stops when it resumes from a checkpoint; no fairseq issue found",
        scope="only data-parallel runs (fairseq broadcasts only between ranks), only bytes sent by rank 0 of the "
        "same run, which read the file with the weights-only loader; the ranks already unpickle each "
        "other's bytes in fairseq's `all_gather_list`",
        install=_install_resume_broadcast,
    ),
)


def _fix(name: str) -> Fix:
    for fix in FIXES:
        if fix.name == name:
            return fix
    raise KeyError(f"no fix named {name!r} (known: {', '.join(f.name for f in FIXES)})")


def install_all(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Install every fix whose switch is not set; returns their names.  Idempotent."""
    installed = []
    for fix in FIXES:
        switch = fix.turned_off_by(environ)
        if switch is None:
            fix.install()
            installed.append(fix.name)
        else:
            logger.info(f"{fix.name} left out ({switch})" + (f": {fix.when_off}" if fix.when_off else ""))
    return installed


def markdown_table(full: bool = False) -> str:
    """The table README.md shows under "What importing the plugin changes" (``full``: the
    one docs/fairseq-fixes.md shows, with the upstream problem and the scope of each change)."""
    if full:
        rows = ["| name | what it changes | upstream problem | scope | how to turn off |", "|---|---|---|---|---|"]
    else:
        rows = ["| name | what it changes, and where | how to turn off |", "|---|---|---|"]
    for fix in FIXES:
        if full:
            cells = [f"`{fix.name}`", fix.changes, fix.upstream, fix.scope, fix.how_to_turn_off()]
        else:
            cells = [f"`{fix.name}`", fix.summary, fix.how_to_turn_off()]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)
