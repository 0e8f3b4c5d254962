"""``format: html``: the text nodes of an HTML fragment are translated, the markup is kept as it is.

:func:`split_html` cuts a fragment into markup and text nodes with Python's ``html.parser``;
:func:`join_html` puts it back together with each text node replaced by its translation (escaped
again).  Text inside ``<script>`` and ``<style>`` is markup, not text.  A text node keeps its
leading and trailing whitespace; only what is between is translated.  Like LibreTranslate, html
requests get no alternatives.
"""

import html
from html.parser import HTMLParser
from typing import List, Sequence, Tuple

#: elements whose content is not text for people
RAW_TEXT = ("script", "style")


#: (is a text node, the string: markup as written, or the text node unescaped)
Piece = Tuple[bool, str]


class _Splitter(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.pieces: List[Piece] = []
        self._raw_depth = 0  # inside <script> / <style>

    def _markup(self, text: str) -> None:
        self.pieces.append((False, text))

    def handle_starttag(self, tag, attrs):
        self._markup(self.get_starttag_text() or f"<{tag}>")
        if tag in RAW_TEXT:
            self._raw_depth += 1

    def handle_startendtag(self, tag, attrs):
        self._markup(self.get_starttag_text() or f"<{tag}/>")

    def handle_endtag(self, tag):
        self._markup(f"</{tag}>")
        if tag in RAW_TEXT and self._raw_depth:
            self._raw_depth -= 1

    def handle_data(self, data):
        if self._raw_depth:
            self._markup(data)
        else:
            self.pieces.append((True, data))

    def handle_comment(self, data):
        self._markup(f"<!--{data}-->")

    def handle_decl(self, decl):
        self._markup(f"<!{decl}>")

    def handle_pi(self, data):
        self._markup(f"<?{data}>")

    def unknown_decl(self, data):
        self._markup(f"<![{data}]>")


def split_html(fragment: str) -> List[Piece]:
    """The fragment as ``(is_text, string)`` pieces, in order; text nodes unescaped."""
    splitter = _Splitter()
    splitter.feed(fragment)
    splitter.close()
    return splitter.pieces


def texts_to_translate(pieces: Sequence[Piece]) -> List[str]:
    """The text nodes that hold words, stripped of their surrounding whitespace."""
    return [text.strip() for is_text, text in pieces if is_text and text.strip()]


def join_html(pieces: Sequence[Piece], translations: Sequence[str]) -> str:
    """The fragment with the text nodes of :func:`texts_to_translate` replaced by ``translations``."""
    out: List[str] = []
    next_translation = iter(translations)
    for is_text, text in pieces:
        if not is_text:
            out.append(text)
        elif not text.strip():
            out.append(html.escape(text, quote=False))
        else:
            lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()) :]
            out.append(lead + html.escape(next(next_translation), quote=False) + trail)
    return "".join(out)
