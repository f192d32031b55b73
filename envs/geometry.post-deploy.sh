#!/usr/bin/env bash
# Run by Snakemake inside this conda environment right after creating it (`--sdm conda`): install the project's
# library, lmcompare (src/lmcompare), editable, so that every rule's script imports it as the venv of setup.sh does.
# The Snakefile exports LMCOMPARE_PROJECT, the project folder.
set -euo pipefail
python -m pip install --no-deps -e "${LMCOMPARE_PROJECT:?the Snakefile sets LMCOMPARE_PROJECT to the project folder}"
