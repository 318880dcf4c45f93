#!/usr/bin/env bash
# Set everything up, then run the main job on the shipped default: open the samples in napari and run the
# bundled models on them (disc labels on the lumbar MRI, segmentations of the colonoscopy and cardiac samples).
# Without a display, the same pipeline runs headless (virtual X server) and writes screenshots and a
# summary and the models' results (discs CSV, labels PNG / NIfTI) to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${NAPARI_MEDSEG_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export NAPARI_MEDSEG_DATA_DIR="$(cd ../shared/data && pwd)"
fi
exec .venv/bin/napari-medseg demo --out "${1:-out/demo}"
