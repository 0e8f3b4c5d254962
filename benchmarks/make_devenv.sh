#!/usr/bin/env bash
# Build the bundle that benchmarks/gpu_run.sh needs on a GPU machine without network (CPython 3.12,
# x86-64, torch/numpy/Cython/sacrebleu installed; no fairseq, hydra-core, omegaconf, antlr4, bitarray,
# PyYAML).  Run here, with the project's .venv (fairseq installed) and network to PyPI:
#
#   bash benchmarks/make_devenv.sh [DEVENV]        # default: .devenv in the repository (git-ignored
#                                                  # through .git/info/exclude, added if missing)
#   CHECKPOINT=/tmp/gt/ck_fconv/checkpoint_best.pt bash benchmarks/make_devenv.sh   # + the stripped checkpoint
#
# Writes DEVENV/{wheels/, fairseq.tar.gz, fast_ext/, gt-bin/[, fconv_checkpoint.pt]}; see
# benchmarks/gpu_env.py for what each part is.  Settings (environment): DATA (binarized data, default
# /tmp/gt/bin), VENV_PY (default .venv/bin/python), PY312 (a CPython 3.12 to build the Cython modules
# with, default pyenv's 3.12.1), WORK (scratch folder, default /tmp/fconv-devenv-build).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVENV=$(realpath -m "${1:-$REPO/.devenv}")
DATA=${DATA:-/tmp/gt/bin}
CHECKPOINT=${CHECKPOINT:-}
VENV_PY=${VENV_PY:-$REPO/.venv/bin/python}
PY312=${PY312:-$HOME/.pyenv/versions/3.12.1/bin/python}
WORK=${WORK:-/tmp/fconv-devenv-build}
# the GPU machine: CPython 3.12 on x86-64 Linux (manylinux wheels)
PLATFORM=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

version_of() { "$VENV_PY" -c "from importlib.metadata import version; print(version('$1'))"; }
step() { echo; echo "== $*"; }

mkdir -p "$DEVENV/wheels" "$DEVENV/fast_ext" "$DEVENV/gt-bin" "$WORK"
case "$DEVENV/" in
  "$REPO"/*)
    exclude="/${DEVENV#"$REPO"/}/"
    grep -qxF "$exclude" "$REPO/.git/info/exclude" 2>/dev/null || echo "$exclude" >> "$REPO/.git/info/exclude"
    ;;
esac

step "wheels for CPython 3.12 x86-64 (the versions installed in $VENV_PY's environment)"
rm -f "$DEVENV"/wheels/*.whl
for package in hydra-core omegaconf bitarray PyYAML antlr4-python3-runtime; do
  spec="$package==$(version_of "$package")"
  if ! "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$DEVENV/wheels" "$spec"; then
    # antlr4-python3-runtime 4.9.x (what hydra-core 1.3 needs) is published as an sdist only; pure Python
    echo "no wheel of $spec on the index: building one from its sdist"
    "$VENV_PY" -m pip wheel -q --no-deps --no-binary=:all: --no-build-isolation -w "$DEVENV/wheels" "$spec"
  fi
done
ls -l "$DEVENV/wheels"

step "fairseq and fairseq_cli, pure Python, as installed (no compiled modules, no fairseq/examples)"
SITE_PACKAGES=$("$VENV_PY" -c 'import os, fairseq; print(os.path.dirname(os.path.dirname(fairseq.__file__)))' 2>/dev/null | tail -1)
tar czf "$DEVENV/fairseq.tar.gz" -C "$SITE_PACKAGES" --exclude=__pycache__ --exclude='*.so' \
    --exclude=fairseq/examples fairseq fairseq_cli
ls -l "$DEVENV/fairseq.tar.gz"

step "fairseq's Cython modules for CPython 3.12 ($PY312)"
FAIRSEQ_VERSION=$(version_of fairseq-fixed)
SDIST="$WORK/fairseq_fixed-$FAIRSEQ_VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then  # --no-build-isolation: pip reads the sdist's metadata with this venv's torch/numpy
  "$VENV_PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$WORK" "fairseq-fixed==$FAIRSEQ_VERSION"
fi
BUILD="$WORK/ext"
rm -rf "$BUILD" && mkdir -p "$BUILD/fairseq/data"
for module in data_utils_fast token_block_utils_fast; do
  tar xzf "$SDIST" -C "$BUILD/fairseq/data" --strip-components=3 "fairseq_fixed-$FAIRSEQ_VERSION/fairseq/data/$module.pyx"
  cp "$REPO/benchmarks/fairseq_fast_ext.pyxbld" "$BUILD/fairseq/data/$module.pyxbld"
done
BUILD_VENV="$WORK/py312"
if [ ! -x "$BUILD_VENV/bin/python" ]; then
  "$PY312" -m venv "$BUILD_VENV"
  "$BUILD_VENV/bin/pip" install -q numpy cython setuptools
fi
cat > "$BUILD/setup.py" <<'EOF'
"""Build both modules with the recipe pyximport would use (fairseq_fast_ext.pyxbld)."""
import runpy

from Cython.Build import cythonize
from setuptools import setup

recipe = runpy.run_path("fairseq/data/data_utils_fast.pyxbld")["make_ext"]
extensions = [recipe(f"fairseq.data.{m}", f"fairseq/data/{m}.pyx") for m in ("data_utils_fast", "token_block_utils_fast")]
setup(name="fairseq-fast-ext", ext_modules=cythonize(extensions, language_level=3))
EOF
(cd "$BUILD" && "$BUILD_VENV/bin/python" setup.py -q build_ext --inplace > build.log 2>&1) \
  || { tail -30 "$BUILD/build.log"; exit 1; }
rm -f "$DEVENV"/fast_ext/*
for module in data_utils_fast token_block_utils_fast; do
  so=$(ls "$BUILD"/fairseq/data/"$module".cpython-312-*.so)
  strip --strip-debug "$so"
  cp "$so" "$BUILD/fairseq/data/$module.pyx" "$BUILD/fairseq/data/$module.pyxbld" "$DEVENV/fast_ext/"
done
# numpy in the 3.12 build venv: the prebuilt modules load with that numpy or a newer 2.x
"$BUILD_VENV/bin/python" -c "import sys, numpy; sys.path.insert(0, '$BUILD'); import fairseq.data.data_utils_fast as m; \
print('3.12 import ok:', m.__file__, 'numpy', numpy.__version__)"
ls -l "$DEVENV/fast_ext"

step "binarized data from $DATA"
rm -f "$DEVENV"/gt-bin/*
cp "$DATA"/dict.*.txt "$DATA"/test.* "$DATA"/train.* "$DEVENV/gt-bin/"
cp "$DATA"/valid.* "$DEVENV/gt-bin/" 2>/dev/null || echo "(no valid split)"
du -sh "$DEVENV/gt-bin"

if [ -n "$CHECKPOINT" ]; then
  step "checkpoint $CHECKPOINT without optimizer state"
  "$VENV_PY" "$REPO/benchmarks/strip_checkpoint.py" "$CHECKPOINT" "$DEVENV/fconv_checkpoint.pt"
fi

step "bundle"
du -sh "$DEVENV"
