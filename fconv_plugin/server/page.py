"""The page at ``/``: a translation box, the n-best list, and for the chosen translation each decoder
layer's attention as a heatmap (source words x target words), ConvS2S's multi-step attention.

The page is one self-contained file, ``static/index.html`` (HTML, CSS and plain JavaScript: no
framework, nothing fetched from elsewhere).  It reads ``/frontend/settings`` for the languages and
limits, and posts the sentence to ``/attention``, which answers with the translation, the n-best
list and one matrix per attention layer (``weights[t][s]``: target word t's attention on source
word s); the heatmaps are drawn on canvases, one per layer.
"""

import functools
import os

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


@functools.lru_cache(maxsize=1)
def html() -> str:
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        return f.read()
