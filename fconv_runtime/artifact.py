"""An exported model directory (``fconv-ext-export``'s OUTDIR): its manifest, checksums and dictionaries.

Nothing here imports torch or fairseq.  The directory holds::

    manifest.json          format, format_version, runtime ("onnx" or "aoti"), the model's config,
                           what was exported, and the sha256 of every other file
    encoder.onnx | .pt2    src_tokens -> keys, values, source_mask, length_scale
    step.onnx | .pt2       one decoder step with fairseq's beam-search step (fconv_plugin.serving.beam_graph)
    dict.<lang>.txt        the source and target dictionaries, fairseq's dict.txt format
    bpe.codes              subword-nmt BPE codes (optional)

:func:`load_manifest` refuses, with a message that says what to do, a missing directory, a manifest
from a newer format version, a file whose checksum does not match (truncated or corrupt copy), and
dictionaries whose size is not the graph's vocabulary.
"""

import hashlib
import json
import os
from typing import Any, Dict, List

FORMAT = "fconv-ext-export"
#: the manifest format this code writes and reads; a newer one is refused (its fields may mean other things)
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: fairseq's Dictionary puts these four first, in this order (<s>, <pad>, </s>, <unk> = 0..3)
SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")
BOS, PAD, EOS, UNK = range(4)
_OVERWRITE_FLAG = "#fairseq:overwrite"


class ArtifactError(RuntimeError):
    """An exported model directory that cannot be used; the message says what to do."""


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(directory: str, verify: bool = True) -> Dict[str, Any]:
    """The manifest of ``directory``, after checking its format version and (``verify``) every
    file's sha256."""
    if not os.path.isdir(directory):
        raise ArtifactError(
            f"{directory!r} is not a directory: give the OUTDIR that fconv-ext-export wrote "
            "(fconv-ext-export CHECKPOINT OUTDIR --format onnx)"
        )
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise ArtifactError(
            f"{directory!r} has no {MANIFEST}: it is not an exported model, or the export did "
            "not finish (the manifest is written last); export again"
        )
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(
            f"{path!r} is not valid JSON ({err}): the copy is damaged; export or copy it again"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path!r} is not a manifest of {FORMAT} (format: {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{directory!r} was written in format version {version!r}; this fconv_runtime reads versions up to "
            f"{FORMAT_VERSION}: upgrade fconv-ext (pip install -U fconv-ext), or export the model again with this one"
        )
    if verify:
        verify_checksums(directory, manifest)
    return manifest


def verify_checksums(directory: str, manifest: Dict[str, Any]) -> None:
    """Every file the manifest lists exists and has its recorded sha256."""
    for name, expected in sorted(manifest.get("files", {}).items()):
        path = os.path.join(directory, name)
        if os.path.basename(name) != name:
            raise ArtifactError(
                f"the manifest of {directory!r} names {name!r}, a path outside the directory: refusing it"
            )
        if not os.path.isfile(path):
            raise ArtifactError(f"{path!r} is missing: copy the whole exported directory, or export again")
        actual = sha256_of(path)
        if actual != expected:
            raise ArtifactError(
                f"{path!r} does not match its checksum in {MANIFEST} (sha256 {actual[:12]}..., "
                f"expected {expected[:12]}...): the file is truncated or corrupt; copy it again "
                "or export again"
            )


def read_dictionary(path: str) -> List[str]:
    """The symbols of a fairseq ``dict.txt`` in index order: ``<s>, <pad>, </s>, <unk>``, then one
    ``word count`` line each (a ``#fairseq:overwrite`` line updates an existing word, adding none)."""
    symbols = list(SPECIAL_SYMBOLS)
    seen = set(symbols)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                continue
            overwrite = line.endswith(" " + _OVERWRITE_FLAG)
            if overwrite:
                line = line[: -len(_OVERWRITE_FLAG) - 1]
            word, sep, count = line.rpartition(" ")
            if not sep or not count.isdigit():
                raise ArtifactError(
                    f"{path}:{number}: expected '<word> <count>', got {line!r}: not a fairseq dictionary"
                )
            if word in seen:
                if overwrite:
                    continue
                raise ArtifactError(f"{path}:{number}: duplicate word {word!r} (fairseq needs #fairseq:overwrite)")
            seen.add(word)
            symbols.append(word)
    return symbols


def write_manifest(directory: str, manifest: Dict[str, Any]) -> str:
    """Write ``manifest`` with the sha256 of every file in ``directory`` (written last: an OUTDIR is
    complete exactly when its manifest is there)."""
    files = sorted(n for n in os.listdir(directory) if n != MANIFEST and os.path.isfile(os.path.join(directory, n)))
    manifest = dict(
        manifest,
        format=FORMAT,
        format_version=FORMAT_VERSION,
        files={name: sha256_of(os.path.join(directory, name)) for name in files},
    )
    path = os.path.join(directory, MANIFEST)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path
