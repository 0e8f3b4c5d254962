"""Input lines for fairseq-interactive that cannot stop the whole run.

fairseq's reader, ``fairseq_cli.interactive.buffered_read(input, buffer_size)``, reads
``--input`` with ``fileinput``: a file as strict UTF-8 in text mode (lines end at ``\\n``,
``\\r\\n`` or ``\\r``), ``-`` as ``sys.stdin``, which for the process's own standard
input decodes with the locale's encoding, strictly under a UTF-8 locale.  It yields the
stripped lines in lists of ``buffer_size``.  One stray byte anywhere (a Latin-1 file, a
binary paste) raises ``UnicodeDecodeError`` and nothing at all is translated
(docs/upstream-problems.md, problem 12).

:func:`buffered_read` yields the same lists for every input fairseq's reads, and where
fairseq's would raise, it replaces the undecodable bytes by U+FFFD with a warning naming
the line:

* a file: its bytes, line by line, decoded as UTF-8 and split where text mode splits them;
* the process's own standard input (``sys.__stdin__``) when it decodes strictly, in an
  encoding where the byte ``\\n`` always ends a line (UTF-8 and the other ASCII-compatible
  ones): its bytes (``sys.stdin.buffer``) decoded with ``sys.stdin.encoding``, split at
  ``\\n`` as Python's standard input does (also at ``\\r`` on Windows);
* any other ``sys.stdin`` (an ``io.StringIO`` set by code that calls
  ``fairseq_cli.interactive.main``, a notebook's stream, standard input that already
  tolerates bad bytes, e.g. ``surrogateescape`` under the C locale): read exactly as fairseq
  reads it.

:mod:`fconv_plugin.fairseq_fixes` (entry ``interactive_input``) puts it in place of
fairseq's; importing this module changes nothing.
"""

import logging
import os
import re
import sys
from typing import IO, Iterator, List

logger = logging.getLogger("fconv_plugin.interactive")

_LINE_END = re.compile(r"\r\n|\r|\n")  # what text mode with universal newlines ends a line at


def buffered_read(input: str, buffer_size: int) -> Iterator[List[str]]:
    """fairseq's ``buffered_read``: the stripped lines of ``input`` (a path, or ``-`` for
    ``sys.stdin``) in lists of ``buffer_size``, undecodable bytes replaced by U+FFFD."""
    buffer: List[str] = []
    for line in _lines(input):
        buffer.append(line.strip())
        if len(buffer) >= buffer_size:
            yield buffer
            buffer = []
    if buffer:
        yield buffer


def _lines(input: str) -> Iterator[str]:
    if input != "-":
        with open(input, "rb") as f:
            yield from _decoded_lines(f, "utf-8", universal_newlines=True, name=input)
        return
    stream = sys.stdin
    if _read_as_bytes(stream):
        yield from _decoded_lines(stream.buffer, stream.encoding, universal_newlines=os.name == "nt", name="stdin")
    else:
        yield from stream  # text as fairseq gets it (fileinput reads sys.stdin line by line)


def _read_as_bytes(stream) -> bool:
    if stream is not sys.__stdin__ or getattr(stream, "buffer", None) is None:
        return False
    encoding = getattr(stream, "encoding", None)
    return getattr(stream, "errors", None) == "strict" and bool(encoding) and "\n".encode(encoding) == b"\n"


def _decoded_lines(binary: IO[bytes], encoding: str, universal_newlines: bool, name: str) -> Iterator[str]:
    number = 0
    for raw in binary:  # one piece per b"\n"
        try:
            text, replaced = raw.decode(encoding), False
        except UnicodeDecodeError:
            text, replaced = raw.decode(encoding, errors="replace"), True
        lines = [text]
        if universal_newlines:
            lines = _LINE_END.split(text)
            if lines[-1] == "":  # the piece ended with a line end
                lines.pop()
        for line in lines:
            number += 1
            if replaced and "\ufffd" in line:
                logger.warning(f"{name} line {number}: bytes that are not {encoding} were replaced by U+FFFD")
            yield line
