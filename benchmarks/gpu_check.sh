#!/usr/bin/env bash
# One command on a machine with one CUDA GPU (about 10 minutes): the GPU's device tests, one AMP training
# step per network at paper size with its gradient fidelity, and a 300-slice CT through every bundled model.
# Run it from the repository root with the project's .venv (a CUDA build of torch); record the tables in
# docs/benchmarks.md ("On a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export NAPARI_MEDSEG_DATA_DIR=${NAPARI_MEDSEG_DATA_DIR:-../shared/data}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
"$PY" -m pytest -q -p no:cacheprovider tests/test_engine.py -k "device or precision or memory" 2>&1 | tail -3
exec "$PY" benchmarks/gpu_check.py --device cuda --size paper "$@"
