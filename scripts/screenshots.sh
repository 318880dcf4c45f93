#!/usr/bin/env bash
# Regenerate docs/images/*.png from a real napari viewer (virtual display when there is none).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_CONFIG_HOME="${XDG_CONFIG_HOME:-$(mktemp -d)}"
if [ -n "${DISPLAY:-}" ]; then exec .venv/bin/python scripts/screenshots.py; fi
exec xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/screenshots.py
