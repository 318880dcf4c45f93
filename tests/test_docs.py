"""The docs are true to the code: every command in the shell blocks of README.md and docs/*.md is checked.

* every ``napari-medseg ...`` line parses with the real CLI parser (flags and choices as documented), and
  every ``--model`` it names is a bundled model;
* every script, benchmark and recipe a shell block runs exists;
* the commands that take under a minute run and exit 0: ``models`` (and ``--json``), and each documented
  ``evaluate --model <bundled>`` on two cases of its dataset (``--max-cases 2``: the documented flags, end
  to end on real data).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from napari_medseg import api
from napari_medseg.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_lines() -> list[tuple[str, str]]:
    """(file name, command) for every command line of the bash/sh blocks, comments and prompts removed."""
    out = []
    for f in DOCS:
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", f.read_text(encoding="utf-8"), re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].split(" # ")[0].strip()
                if line and not line.startswith("#"):
                    out.append((f.name, line))
    return out


def cli_args(line: str) -> list[str] | None:
    """The arguments after ``napari-medseg`` in a documented command, or None if it does not call the CLI."""
    words = shlex.split(line)
    for i, w in enumerate(words):
        if w.endswith("napari-medseg") and not w.startswith("-"):
            args = [a for a in words[i + 1:] if not (a.startswith("[") and a.endswith("]"))]  # [--json]: optional
            return args
    return None


COMMANDS = [(name, line, cli_args(line)) for name, line in shell_lines() if cli_args(line) is not None]


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 20  # README and docs/engine.md, results.md (the extraction itself can fail)


@pytest.mark.parametrize("name,line,args", COMMANDS, ids=[f"{n}:{a[0] if a else ''}:{i}" for i, (n, _, a) in enumerate(COMMANDS)])
def test_documented_cli_command_parses(name, line, args):
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as err:  # argparse exits on an unknown flag or a bad choice
        raise AssertionError(f"{name}: `{line}` does not parse with the CLI") from err
    model = getattr(ns, "model", None)
    if model and ns.command != "train":
        assert model in api.bundled_weights(), f"{name}: `{line}` names {model!r}, which is not bundled"


def test_documented_scripts_and_recipes_exist():
    missing = []
    for name, line in shell_lines():
        for path in re.findall(r"(?:scripts|benchmarks|recipes)/[\w./-]+\.(?:py|sh|json)", line):
            if not (ROOT / path).is_file():
                missing.append(f"{name}: {path}")
    assert not missing, missing


@pytest.mark.parametrize("args", [["models"], ["models", "--json"]])
def test_models_commands_run(args, capsys):
    assert main(args) == 0
    assert "unet-kvasir-192" in capsys.readouterr().out


EVALUATE = sorted({tuple(a) for _, _, a in COMMANDS if a and a[0] == "evaluate" and "--model" in a})


@pytest.mark.parametrize("args", EVALUATE, ids=[a[a.index("--model") + 1] for a in EVALUATE])
def test_documented_evaluate_runs_on_two_cases(args, shared, capsys):
    args = [a.replace("../shared/data", str(shared)) for a in args]
    assert main([*args, "--max-cases", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert '"dice"' in out or '"l2_mm"' in out, out


def _message_strings() -> list[str]:
    """Every string the package can print: string constants and the literal parts of f-strings (formatted
    values become a break), implicit concatenations joined as Python joins them."""
    import ast

    out = []
    for path in (ROOT / "napari_medseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                out.append("\x00".join(v.value if isinstance(v, ast.Constant) else "" for v in node.values))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append(node.value)
    return out


def test_error_messages_quoted_in_docs_io_are_printed_by_the_code():
    """Each message the Errors table of docs/io.md quotes (its result column, in backticks) is made of text
    the package really prints: every literal run of 12+ characters between the values that vary (``...``,
    placeholders, numbers, exception names, the output format) is part of a string in the code. A message
    reworded in the code and not in the docs fails here."""
    strings = _message_strings()
    text = (ROOT / "docs" / "io.md").read_text(encoding="utf-8")
    table = text[text.index("## Errors"):]
    variable = r"\.\.\.|<\w+>|\b[XYNM]\b|\b\d+(?:\.\d+)?\b|\b[A-Z]\w*(?:Error|Exception|Warning)\b|dicom-seg|dicom-sr"
    checked, missing = 0, []
    for line in table.splitlines():
        if not line.startswith("| ") or line.startswith(("| input", "|---")):
            continue
        result = line.strip().strip("|").split("|")[-1]
        for quoted in re.findall(r"`([^`]+)`", result):
            if quoted.startswith(("predict", "napari-medseg", "tests/", "io.")):
                continue  # a command or a name, not a message
            for run in re.split(variable, quoted):
                run = run.strip(" (),:;")
                if len(run) < 12:
                    continue
                checked += 1
                if not any(run in s.replace("\x00", "") or run in s for s in strings):
                    missing.append(run)
    assert checked >= 15 and not missing, missing
