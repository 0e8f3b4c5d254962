"""fairseq's CLIs with this plugin loaded, for an installed fconv-ext.

``fconv-ext-train ARGS`` is ``fairseq-train ARGS --user-dir <installed fconv_plugin>``
(likewise ``fconv-ext-generate`` and ``fconv-ext-interactive``), so the plugin works
from any directory.  ``fconv-ext-user-dir`` prints the directory to pass as
``--user-dir`` to fairseq's own commands.
"""

import os
import sys

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _with_user_dir(argv):
    if any(a == "--user-dir" or a.startswith("--user-dir=") for a in argv):
        return argv
    return argv + ["--user-dir", PLUGIN_DIR]


def _run(module_name: str):
    import importlib

    sys.argv = [sys.argv[0]] + _with_user_dir(sys.argv[1:])
    return importlib.import_module(module_name).cli_main()


def train():
    return _run("fairseq_cli.train")


def generate():
    return _run("fairseq_cli.generate")


def interactive():
    return _run("fairseq_cli.interactive")


def print_user_dir():
    print(PLUGIN_DIR)
