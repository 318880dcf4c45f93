"""Reporting helpers shared by the benchmark scripts: the JSON result file and the Markdown table that
docs/benchmarks.md quotes."""

from __future__ import annotations

import json
from pathlib import Path


def save_json(path: str | Path, payload) -> Path:
    """Write ``payload`` as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    """Print a Markdown table, preceded by a blank line."""
    print("\n| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
