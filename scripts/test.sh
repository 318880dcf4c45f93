#!/usr/bin/env bash
# Set everything up (virtualenv, pinned packages, Xvfb where apt is available), then run the whole test
# suite. pytest-xvfb starts a virtual display for the napari viewer tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${NAPARI_MEDSEG_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export NAPARI_MEDSEG_DATA_DIR="$(cd ../shared/data && pwd)"
fi
export XDG_CONFIG_HOME="${XDG_CONFIG_HOME:-$(mktemp -d)}" XDG_CACHE_HOME="${XDG_CACHE_HOME:-$(mktemp -d)}"
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
