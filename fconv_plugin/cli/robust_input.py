"""Input lines for fairseq-interactive that cannot crash the whole run.

fairseq-interactive decodes its input strictly as UTF-8: one stray byte anywhere
(a Latin-1 file, a binary paste) raises ``UnicodeDecodeError`` and nothing at all is
translated.  :func:`buffered_read` reads bytes, replaces undecodable bytes by U+FFFD
with a warning naming the line, and yields the same buffers fairseq's does.
:func:`install` puts it in place of ``fairseq_cli.interactive.buffered_read`` in this
process when fairseq-interactive is what imported the plugin (``--user-dir
fconv_plugin`` or ``fconv-ext-interactive``); no installed file changes.
"""

import logging
import sys
from typing import Iterator, List

logger = logging.getLogger("fconv_plugin.interactive")


def buffered_read(input: str, buffer_size: int) -> Iterator[List[str]]:
    stream = sys.stdin.buffer if input == "-" else open(input, "rb")
    buffer: List[str] = []
    try:
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                logger.warning(f"input line {number}: bytes that are not UTF-8 were replaced by U+FFFD")
            buffer.append(line.strip())
            if len(buffer) >= buffer_size:
                yield buffer
                buffer = []
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if buffer:
        yield buffer


def install() -> None:
    module = sys.modules.get("fairseq_cli.interactive")
    if module is not None and getattr(module, "buffered_read", None) is not buffered_read:
        module.buffered_read = buffered_read
