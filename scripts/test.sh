#!/usr/bin/env bash
# Set up .venv if needed, then lint and run the test suite (CPU, a few minutes). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export NO_ALBUMENTATIONS_UPDATE=1
.venv/bin/ruff check seti_fastai scripts tests bench
.venv/bin/python -m pytest -q "$@"
