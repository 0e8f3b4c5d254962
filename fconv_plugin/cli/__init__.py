"""Command-line tools of fconv-ext (console entry points, see setup.cfg)."""
