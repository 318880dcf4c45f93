#!/usr/bin/env bash
# Set up .venv with the pinned test/CI versions (.ci/constraints.txt) and, where we can (root + apt),
# the X libraries napari needs plus Xvfb for machines without a display.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && ! command -v Xvfb >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="$(command -v sudo || true)"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "== installing Xvfb and the xcb/GL libraries Qt needs (apt)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0 libxcb-render-util0 \
      libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-shape0 libegl1 libgl1 \
      libdbus-1-3 libfontconfig1 >/dev/null
  else
    echo "!! Xvfb is missing and this user cannot apt-get install it; GUI tests need a display" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== installing napari-medseg and its pinned dependencies into .venv"
# reinstall only when the package's requirements changed (a stamp of pyproject.toml + constraints)
stamp=".venv/.medseg-installed"
want="$(cat pyproject.toml .ci/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import napari_medseg" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c .ci/constraints.txt -e ".[testing]"
  echo "$want" > "$stamp"
else
  echo "== already installed (pyproject.toml and .ci/constraints.txt unchanged)"
fi

# the shared data folder of this project's machines doubles as the sample-data source
if [ -z "${NAPARI_MEDSEG_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  echo "== sample data: ../shared/data (set NAPARI_MEDSEG_DATA_DIR to use another folder)"
fi
