"""Lay out fairseq and its missing dependencies from the ``.devenv`` bundle on a machine without network.

    python benchmarks/gpu_env.py install DEVENV SITE   # wheels, fairseq, Cython extensions into SITE
    PYTHONPATH=SITE:REPO python benchmarks/gpu_env.py check SITE   # imports, pyximport fallback, versions

Used by ``benchmarks/gpu_run.sh`` on the lent GPU machine, whose Python has torch, numpy, Cython,
sacrebleu, scikit-learn... but not fairseq, hydra-core, omegaconf, antlr4-python3-runtime, bitarray or
PyYAML.  ``benchmarks/make_devenv.sh`` builds the bundle:

* ``wheels/*.whl``: those packages for CPython 3.12 x86-64 (installed with ``pip --target``, or by
  unpacking the wheels where the interpreter has no pip);
* ``fairseq.tar.gz``: the installed fairseq and fairseq_cli, pure Python (no compiled modules, no
  ``fairseq/examples``);
* ``fast_ext/``: fairseq's two Cython modules for batching (``data_utils_fast``,
  ``token_block_utils_fast``) built for CPython 3.12, their ``.pyx`` sources and ``.pyxbld`` build
  recipes.  ``check`` imports them; where the prebuilt module does not load (another Python, another
  numpy ABI), it compiles the ``.pyx`` with pyximport (C++, numpy's headers) and installs the result;
* ``gt-bin/``: the binarized gettext data (dictionaries, train/valid/test).

Every step says what it did; a failure ends with the traceback and a non-zero exit status.
"""

import argparse
import glob
import importlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
import zipfile

FAST_MODULES = ("data_utils_fast", "token_block_utils_fast")


def install(devenv, site):
    """Install the bundle's wheels, fairseq and the Cython modules into ``site``."""
    os.makedirs(site, exist_ok=True)
    wheels = sorted(glob.glob(os.path.join(devenv, "wheels", "*.whl")))
    if not wheels:
        raise SystemExit(f"no wheels in {devenv}/wheels: build the bundle with benchmarks/make_devenv.sh")
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--disable-pip-version-check",
                "--target",
                site,
                *wheels,
            ],
            check=True,
        )
    else:  # a wheel is a zip of the files as they lie in site-packages (these wheels have no .data scripts)
        print("no pip for this Python: unpacking the wheels", flush=True)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
    print(f"installed {len(wheels)} wheels into {site}: {', '.join(os.path.basename(w).split('-')[0] for w in wheels)}")

    archive = os.path.join(devenv, "fairseq.tar.gz")
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 (and 3.11.4): refuse links and paths outside site
            tar.extractall(site, filter="data")
        else:
            tar.extractall(site)
    print(f"unpacked {archive} into {site}")

    data_dir = os.path.join(site, "fairseq", "data")
    copied = []
    for path in sorted(glob.glob(os.path.join(devenv, "fast_ext", "*"))):
        shutil.copy2(path, data_dir)
        copied.append(os.path.basename(path))
    print(f"copied into {data_dir}: {', '.join(copied)}")


def _import_fast_modules():
    """Import fairseq's Cython modules; the first error, or None."""
    for name in FAST_MODULES:
        try:
            importlib.import_module("fairseq.data." + name)
        except Exception:  # reported by the caller, which then builds the module from source
            return traceback.format_exc()
    return None


def build_fast_modules(site):
    """Compile the Cython modules from their ``.pyx`` with pyximport and put the results where a plain
    ``import`` finds them (``SITE/fairseq/data``), so that bench.py's child processes need no pyximport."""
    import numpy
    import pyximport

    data_dir = os.path.join(site, "fairseq", "data")
    for name in FAST_MODULES:  # prebuilt modules for this Python that failed to load would shadow the .pyx
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            stale = os.path.join(data_dir, name + suffix)
            if os.path.exists(stale):
                os.rename(stale, stale + ".broken")
                print(f"moved aside {stale} (does not load)")
    build_dir = os.path.join(site, ".pyxbld")
    # the .pyxbld recipes beside the .pyx set C++ and numpy's include directory; setup_args repeats the
    # latter for a .pyx copied without its recipe
    pyximport.install(build_dir=build_dir, setup_args={"include_dirs": [numpy.get_include()]}, language_level=3)
    for name in FAST_MODULES:
        started = time.perf_counter()
        module = importlib.import_module("fairseq.data." + name)
        target = os.path.join(data_dir, name + importlib.machinery.EXTENSION_SUFFIXES[0])
        if os.path.abspath(module.__file__) != os.path.abspath(target):
            shutil.copy2(module.__file__, target)
        print(f"built {name} with pyximport in {time.perf_counter() - started:.1f} s -> {target}")


def check(site):
    """Import what bench.py needs (building the Cython modules if the prebuilt ones do not load) and print
    the versions; raises on any failure."""
    error = _import_fast_modules()
    if error:
        print(f"prebuilt Cython modules do not load here; building them from source:\n{error}", flush=True)
        for name in FAST_MODULES:
            sys.modules.pop("fairseq.data." + name, None)
        build_fast_modules(site)
        # a fresh interpreter must find the built modules without pyximport
        probe = "import fairseq.data.data_utils_fast, fairseq.data.token_block_utils_fast as m; print(m.__file__)"
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the built Cython modules do not import in a new process:\n{proc.stderr[-3000:]}")
        print(f"fresh process imports them: {proc.stdout.strip()}")
    else:
        print(
            "prebuilt Cython modules load: "
            + ", ".join(sys.modules["fairseq.data." + n].__file__ for n in FAST_MODULES)
        )

    import fairseq

    importlib.import_module("fairseq.checkpoint_utils")
    importlib.import_module("fairseq.data")
    importlib.import_module("fairseq.models.fconv")
    importlib.import_module("fairseq.sequence_generator")
    importlib.import_module("fairseq.tasks.translation")
    import hydra
    import numpy
    import omegaconf
    import torch

    fconv_plugin = importlib.import_module("fconv_plugin")  # registers fconv_ext
    from fairseq.models import MODEL_REGISTRY

    if "fconv_ext" not in MODEL_REGISTRY:
        raise SystemExit(f"fconv_plugin ({fconv_plugin.__file__}) did not register the fconv_ext model")
    print(
        f"python {sys.version.split()[0]} ({sys.executable}); torch {torch.__version__} (CUDA {torch.version.cuda}, "
        f"available: {torch.cuda.is_available()}"
        + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
        + f"); numpy {numpy.__version__}; fairseq {fairseq.__version__} ({os.path.dirname(fairseq.__file__)}); "
        f"hydra {hydra.__version__}; omegaconf {omegaconf.__version__}; "
        f"fconv_plugin {os.path.dirname(fconv_plugin.__file__)}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("install", help="wheels, fairseq and the Cython modules from DEVENV into SITE")
    i.add_argument("devenv")
    i.add_argument("site")
    c = sub.add_parser("check", help="import check (SITE and the repository must be on PYTHONPATH)")
    c.add_argument("site")
    args = p.parse_args()
    if args.command == "install":
        install(args.devenv, args.site)
    else:
        check(args.site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
