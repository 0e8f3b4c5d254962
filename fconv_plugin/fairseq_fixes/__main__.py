"""``python -m fconv_plugin.fairseq_fixes [--full]``: the table of what importing the plugin
changes (README.md, "What importing the plugin changes", holds the short one;
docs/fairseq-fixes.md the full one)."""

import sys

from . import markdown_table

print(markdown_table(full="--full" in sys.argv[1:]))
