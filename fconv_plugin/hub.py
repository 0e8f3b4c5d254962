"""fairseq's published ConvS2S models by name: ``FConvExtModel.from_pretrained("conv.wmt14.en-fr")``.

The names and archive addresses are fairseq's own (``FConvModel.hub_models()``,
``FConvModelSelfAtt.hub_models()``).  Loading one:

1. download: fairseq's download and cache (:func:`download`, ``fairseq.file_utils.cached_path``:
   ``$PYTORCH_FAIRSEQ_CACHE``, by default ``~/.cache/torch/pytorch_fairseq``);
2. on the first load, extract the archive safely (:func:`extract_archive`: no member outside
   the target directory, no links, no devices) and convert it
   (:func:`fconv_plugin.convert.archive.convert_directory`: every checkpoint read
   weights-only, old layouts upgraded) into ``<cache>/fconv_ext/<download's name>/``, beside
   the download; the extracted copy is removed afterwards;
3. load that directory with fairseq's hub code (:func:`fairseq.hub_utils.from_pretrained`).
   A second load finds the converted directory and converts nothing.

A download that is not a readable archive, or whose checkpoint is truncated, is deleted
(with fairseq's ``.json`` note of it) and reported with its address; a download that fails
says how to load a manually downloaded archive.  ``from_pretrained`` also takes a local
archive file (converted beside it, into ``<archive>.fconv_ext``), or a directory (one of
fairseq's checkpoints converted into ``<directory>.fconv_ext``; one of this plugin's used as
it is).

The models import this module for their ``hub_models`` / ``from_pretrained``, and models never
depend on the converters (tests/unit/test_imports.py): :mod:`fconv_plugin.convert` registers the
directory conversion here (:func:`register_directory_converter`), as it registers its checkpoint
converter with the models (:mod:`fconv_plugin.models.foreign`).
"""

import copy
import logging
import os
import shutil
import tarfile
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import urlparse

from .checkpoint import CheckpointError, load_checkpoint_file

logger = logging.getLogger(__name__)

#: fairseq's FConvModel.hub_models() (fairseq/models/fconv.py), the same names and addresses
FCONV_MODELS: Dict[str, Any] = {
    "conv.wmt14.en-fr": {
        "path": "https://dl.fbaipublicfiles.com/fairseq/models/wmt14.v2.en-fr.fconv-py.tar.bz2",
        "tokenizer": "moses",
        "bpe": "subword_nmt",
    },
    "conv.wmt14.en-de": {
        "path": "https://dl.fbaipublicfiles.com/fairseq/models/wmt14.en-de.fconv-py.tar.bz2",
        "tokenizer": "moses",
        "bpe": "subword_nmt",
    },
    "conv.wmt17.en-de": {
        "path": "https://dl.fbaipublicfiles.com/fairseq/models/wmt17.v2.en-de.fconv-py.tar.bz2",
        "tokenizer": "moses",
        "bpe": "subword_nmt",
    },
}
#: fairseq's FConvModelSelfAtt.hub_models() (fairseq/models/fconv_self_att.py)
FCONV_SELF_ATT_MODELS: Dict[str, Any] = {
    "conv.stories.pretrained": {
        "path": "https://dl.fbaipublicfiles.com/fairseq/models/stories_checkpoint.tar.gz",
        "checkpoint_file": "pretrained_checkpoint.pt",
        "tokenizer": "nltk",
    },
    "conv.stories": {
        "path": "https://dl.fbaipublicfiles.com/fairseq/models/stories_checkpoint.tar.gz",
        "checkpoint_file": "fusion_checkpoint.pt",
        "tokenizer": "nltk",
        "pretrained": "True",
        "pretrained_checkpoint": "./pretrained_checkpoint.pt",
    },
    # Test set containing dictionaries
    "data.stories": "https://dl.fbaipublicfiles.com/fairseq/data/stories_test.tar.bz2",
}
#: hub entries consumed by the conversion, not passed on to fairseq as overrides
CONVERSION_KEYS = ("pretrained", "pretrained_checkpoint")
#: where the converted models go, inside fairseq's download cache
CONVERTED_SUBDIR = "fconv_ext"
#: written last into a converted directory: it is complete exactly when this file is there
COMPLETE = "fconv_ext_converted.txt"

#: (model directory, new output directory, pretrained checkpoint name or None) -> None; raises
#: ValueError (ConversionError) for a model it cannot convert.  Set by fconv_plugin.convert.
_convert_directory: Optional[Callable[[str, str, Optional[str]], Any]] = None
#: a loaded checkpoint -> whether it is one of fairseq's that the converter converts
_is_foreign: Optional[Callable[[Mapping[str, Any]], bool]] = None


def register_directory_converter(
    convert: Callable[[str, str, Optional[str]], Any], is_foreign: Callable[[Mapping[str, Any]], bool]
) -> None:
    """Let :func:`from_pretrained` convert model directories (fconv_plugin.convert calls this)."""
    global _convert_directory, _is_foreign
    _convert_directory, _is_foreign = convert, is_foreign


def is_converted_directory(path: str) -> bool:
    """Whether ``path`` is a complete converted model directory."""
    return os.path.isfile(os.path.join(path, COMPLETE))


def _converter() -> Callable[[str, str, Optional[str]], Any]:
    if _convert_directory is None:
        raise PublishedModelError("the converters are not registered: import fconv_plugin (not only its models)")
    return _convert_directory


class PublishedModelError(RuntimeError):
    """A published model that cannot be downloaded, extracted or converted; the message
    names the address or file and what to do."""


def download(url: str) -> str:
    """The local path of ``url``, downloaded into fairseq's cache if it is not there yet
    (``fairseq.file_utils.cached_path``).  Tests replace this function."""
    from fairseq import file_utils

    return file_utils.cached_path(url)


def _is_url(path: str) -> bool:
    return urlparse(path).scheme in ("http", "https", "s3")


def _manual_hint(url: str) -> str:
    name = os.path.basename(urlparse(url).path)
    return (
        f"Download it by hand (e.g. curl -LO {url}) and load the file: "
        f"FConvExtModel.from_pretrained('/path/to/{name}'), or extract it and run "
        f"fconv-ext-convert DIR OUT, then from_pretrained(OUT)"
    )


def fetch(url: str) -> str:
    """:func:`download` with a :class:`PublishedModelError` naming ``url`` when it fails."""
    try:
        return download(url)
    except (OSError, RuntimeError, ValueError, ImportError) as err:  # requests' errors are OSErrors; no requests
        raise PublishedModelError(
            f"could not download {url} ({type(err).__name__}: {err}). {_manual_hint(url)}"
        ) from None


# ---------------------------------------------------------------- safe extraction


def _safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's extraction filter: regular files and directories only, each inside
    ``dest`` (Python's ``data`` filter: no absolute paths, no ``..`` outside, safe modes)."""
    if os.path.isabs(member.name):  # the data filter would strip the "/": refused outright
        raise tarfile.AbsolutePathError(member)
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "device or other special file"
        raise tarfile.FilterError(f"member {member.name!r} is a {kind}; a model archive holds only files")
    return tarfile.data_filter(member, dest)


def extract_archive(archive: str, dest: str) -> str:
    """Extract the tar archive ``archive`` (any compression) into the new directory
    ``dest``; returns the model directory: the archive's one top directory, else ``dest``.
    Nothing is written outside ``dest``; on any error ``dest`` is removed and
    :class:`PublishedModelError` says why."""
    if not hasattr(tarfile, "data_filter"):  # added in 3.8.17, 3.9.17, 3.10.12, 3.11.4
        raise PublishedModelError(
            f"cannot extract {archive!r} safely: this Python's tarfile has no extraction filters (Python >= "
            "3.8.17 / 3.9.17 / 3.10.12 / 3.11.4 has them). Upgrade Python, or extract the archive yourself and "
            "pass the extracted directory to from_pretrained / fconv-ext-convert"
        )
    os.makedirs(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter=_safe_member)
    except tarfile.FilterError as err:
        shutil.rmtree(dest, ignore_errors=True)
        raise PublishedModelError(
            f"refusing to extract {archive!r}: {err}. It is not a model archive to trust"
        ) from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:  # truncated / not a tar / bad compression
        shutil.rmtree(dest, ignore_errors=True)
        raise PublishedModelError(f"{archive!r} is truncated or corrupt ({type(err).__name__}: {err})") from None
    entries = os.listdir(dest)
    if len(entries) == 1 and os.path.isdir(os.path.join(dest, entries[0])):
        return os.path.join(dest, entries[0])
    return dest


# ---------------------------------------------------------------- resolving a name


def _delete_download(path: str) -> None:
    """Remove a bad download and fairseq's note of it, so that the next load downloads again."""
    for p in (path, path + ".json"):
        if os.path.isfile(p):
            os.remove(p)


def _convert_archive(archive: str, out: str, pretrained_checkpoint: Optional[str], url: Optional[str]) -> None:
    """Extract ``archive`` next to ``out`` and convert it into ``out``.  A downloaded
    (``url``) archive that cannot be used is deleted."""
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=os.path.basename(out) + ".extracting-", dir=parent)
    try:
        model_dir = extract_archive(archive, os.path.join(work, "x"))
        logger.info(f"converting {archive} (extracted in {model_dir}) into {out}")
        _converter()(model_dir, out, pretrained_checkpoint)
    except (PublishedModelError, CheckpointError) as err:
        if url is None:
            raise PublishedModelError(f"{err}. Use an intact copy of the archive") from None
        _delete_download(archive)
        raise PublishedModelError(
            f"the download of {url} is unusable: {err}. The file has been deleted: load again to download it "
            f"again. {_manual_hint(url)}"
        ) from None
    except ValueError as err:  # ConversionError: a model the converter does not take
        raise PublishedModelError(f"cannot convert {archive!r}: {err}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _needs_conversion(directory: str, checkpoint_file: str) -> bool:
    """Whether a checkpoint of ``directory`` named in ``checkpoint_file`` is fairseq's own."""
    if _is_foreign is None:
        _converter()  # says what is missing
    for name in checkpoint_file.split(os.pathsep):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and _is_foreign(load_checkpoint_file(path)):
            return True
    return False


def resolve(
    model_name_or_path: str, checkpoint_file: str, archive_map: Dict[str, Any], kwargs: Dict[str, Any]
) -> Tuple[str, str, Dict[str, Any]]:
    """``(directory to load, checkpoint_file, kwargs)`` for a hub name, an archive address,
    a local archive file or a directory, converting on the first use (see module doc)."""
    kwargs = dict(kwargs)
    entry = archive_map.get(model_name_or_path, model_name_or_path)
    conversion: Dict[str, Any] = {}
    if isinstance(entry, dict):
        for key, value in entry.items():
            if key == "checkpoint_file":
                checkpoint_file = value
            elif key in CONVERSION_KEYS:
                conversion[key] = value
            elif key != "path" and key not in kwargs:  # the caller's arguments win, as in fairseq
                kwargs[key] = value
        entry = entry["path"]
    for key in CONVERSION_KEYS:  # given by the caller: used by the conversion, and passed on as fairseq does
        if key in kwargs:
            conversion[key] = kwargs[key]
    source = str(entry)
    pretrained = conversion.get("pretrained_checkpoint")

    if _is_url(source):
        archive = fetch(source)
        out = os.path.join(os.path.dirname(archive), CONVERTED_SUBDIR, os.path.basename(archive))
        url: Optional[str] = source
    elif os.path.isfile(source):
        if not tarfile.is_tarfile(source):
            raise PublishedModelError(
                f"{source!r} is a file but not a tar archive: give the directory that holds the checkpoint, "
                "with checkpoint_file=<its name>"
            )
        archive, out, url = source, source + ".fconv_ext", None
    elif os.path.isdir(source):
        if not _needs_conversion(source, checkpoint_file):
            return source, checkpoint_file, kwargs
        archive, out, url = None, os.path.normpath(source) + ".fconv_ext", None
    else:
        names = ", ".join(sorted(k for k, v in archive_map.items() if isinstance(v, dict)))
        raise PublishedModelError(
            f"{model_name_or_path!r} is neither a published model ({names}) nor an existing file or directory"
        )

    if is_converted_directory(out):
        logger.info(f"using the converted model in {out}")
    elif archive is None:
        _convert_local_directory(source, out, pretrained)
    else:
        if os.path.exists(out):  # an older, incomplete conversion
            shutil.rmtree(out)
        _convert_archive(archive, out, pretrained, url)
    return out, checkpoint_file, kwargs


def _convert_local_directory(source: str, out: str, pretrained: Optional[str]) -> None:
    if os.path.exists(out):
        raise PublishedModelError(
            f"{out!r} exists but is not a complete conversion of {source!r}: remove it and load again"
        )
    try:
        _converter()(source, out, pretrained)
    except ValueError as err:  # ConversionError
        raise PublishedModelError(f"cannot convert {source!r}: {err}") from None


def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".", **kwargs):
    """fairseq's ``from_pretrained`` (a :class:`fairseq.hub_utils.GeneratorHubInterface`)
    on the converted model of ``model_name_or_path`` (see :func:`resolve`).
    ``data_name_or_path`` may be a hub name too (``"data.stories"``): downloaded and
    extracted the same way."""
    from fairseq import hub_utils

    archive_map = cls.hub_models()
    model_dir, checkpoint_file, kwargs = resolve(model_name_or_path, checkpoint_file, archive_map, kwargs)
    if data_name_or_path in archive_map:
        data_name_or_path = _data_directory(archive_map[data_name_or_path])
    x = hub_utils.from_pretrained(model_dir, checkpoint_file, data_name_or_path, archive_map=None, **kwargs)
    return hub_utils.GeneratorHubInterface(x["args"], x["task"], x["models"])


def _data_directory(url: str) -> str:
    """A published data archive (dictionaries, test set), downloaded and extracted safely."""
    archive = fetch(url)
    out = os.path.join(os.path.dirname(archive), CONVERTED_SUBDIR, os.path.basename(archive) + ".data")
    if not os.path.isdir(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        work = tempfile.mkdtemp(prefix=os.path.basename(out) + ".extracting-", dir=os.path.dirname(out))
        try:
            os.rename(extract_archive(archive, os.path.join(work, "x")), out)
        except PublishedModelError as err:
            _delete_download(archive)
            raise PublishedModelError(
                f"the download of {url} is unusable: {err}. It has been deleted. {_manual_hint(url)}"
            ) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


def hub_models(table: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``table`` (callers may edit what they get)."""
    return copy.deepcopy(table)


class PublishedModels:
    """Mixin for a fairseq model class (listed before the fairseq base): ``hub_models()`` is
    ``PUBLISHED`` (fairseq's names and archives for that family) and ``from_pretrained`` converts a
    published name or a fairseq archive on first use (:func:`from_pretrained`)."""

    PUBLISHED: Dict[str, Any] = {}

    @classmethod
    def hub_models(cls) -> Dict[str, Any]:
        return hub_models(cls.PUBLISHED)

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".", **kwargs):
        return from_pretrained(cls, model_name_or_path, checkpoint_file, data_name_or_path, **kwargs)
