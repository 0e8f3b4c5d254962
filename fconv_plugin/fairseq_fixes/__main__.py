"""``python -m fconv_plugin.fairseq_fixes``: the table of what importing the plugin changes
(README.md, "What importing the plugin changes", holds the same table)."""

from . import markdown_table

print(markdown_table())
