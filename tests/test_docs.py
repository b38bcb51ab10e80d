"""The documentation that is derived from code stays in step with it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_configuration_md_lists_every_setting_with_its_default() -> None:
    """docs/configuration.md holds the table generated from the settings model; a new setting
    without a regenerated table fails here (run deploy/scripts/settings_doc.py)."""
    settings_doc = _load(ROOT / "deploy" / "scripts" / "settings_doc.py", "ribnode_settings_doc")
    assert settings_doc.table() in (ROOT / "docs" / "configuration.md").read_text()


BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
BENCHMARKS_COLUMNS = ["target", "current figure", "met", "date", "machine", "command"]
TO_MEASURE = "TO MEASURE"


def _benchmark_rows() -> list[tuple[int, list[str]]]:
    """(line number, cells) of every data row of every table in docs/benchmarks.md; each table's
    header must be BENCHMARKS_COLUMNS."""
    rows: list[tuple[int, list[str]]] = []
    lines = BENCHMARKS_MD.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "target":
            assert cells == BENCHMARKS_COLUMNS, f"docs/benchmarks.md:{number}: header {cells}"
            continue
        assert len(cells) == len(BENCHMARKS_COLUMNS), f"docs/benchmarks.md:{number}: {len(cells)} cells"
        rows.append((number, cells))
    return rows


def _command_problem(command: str) -> str | None:
    """Why a command cell does not name something that exists here, or None."""
    code = re.findall(r"`([^`]+)`", command)
    if len(code) != 1:
        return "the command is not one `code` span"
    words = code[0].split()
    if words[0] == "ribnode-lab":
        cli = (ROOT / "src" / "ribnode_lab" / "cli.py").read_text()
        if len(words) < 2 or f'"{words[1]}"' not in cli:
            return f"ribnode-lab has no subcommand {words[1:2]}"
        return None
    if words[0] == "make":
        makefile = (ROOT / "Makefile").read_text()
        if len(words) < 2 or not re.search(rf"^{re.escape(words[1])}:", makefile, re.M):
            return f"the Makefile has no target {words[1:2]}"
        return None
    scripts = [w for w in words if w.startswith("benchmarks/")]
    if not scripts:
        return "the command names no benchmarks/ script, ribnode-lab or make"
    missing = [s for s in scripts if not (ROOT / s).is_file()]
    return f"{missing} do not exist" if missing else None


def test_benchmarks_md_is_one_page_of_reproducible_figures() -> None:
    """docs/benchmarks.md stays one page, and every measured figure names its date, machine and a
    command that exists in this checkout (a script under benchmarks/, a ribnode-lab subcommand
    or a make target). A row still to measure may leave its command open too."""
    text = BENCHMARKS_MD.read_text()
    assert len(text.splitlines()) <= 150, "docs/benchmarks.md is over its 150-line budget"
    rows = _benchmark_rows()
    assert rows, "docs/benchmarks.md has no table rows"
    problems = []
    for number, (_target, figure, met, date, machine, command) in rows:
        where = f"docs/benchmarks.md:{number}"
        if figure == TO_MEASURE:
            if command != TO_MEASURE and (problem := _command_problem(command)):
                problems.append(f"{where}: {problem}")
            continue
        if command == TO_MEASURE or (problem := _command_problem(command)):
            problems.append(f"{where}: a measured figure needs its command ({command!r})")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
            problems.append(f"{where}: date {date!r} is not YYYY-MM-DD")
        if not machine or machine == "-":
            problems.append(f"{where}: no machine")
        if met not in ("yes", "no", "-"):
            problems.append(f"{where}: met is {met!r}, not yes, no or -")
    assert not problems, "\n".join(problems)


def test_benchmarks_commands_are_checked() -> None:
    """The command check above can fail: a deleted script and an unknown subcommand are caught."""
    assert _command_problem("`.venv/bin/python benchmarks/suppression_speed.py --threads 2`")
    assert _command_problem("`ribnode-lab train-everything`")
    assert _command_problem("`ribnode eval-seg`")
    assert _command_problem("`.venv/bin/python benchmarks/ingest.py --runs 3`") is None
    assert _command_problem("`ribnode-lab eval-seg`") is None


DELETED_NAMES = (
    "suppression_tile",
    "rib_median",
    "edge_taper",
    "--backend",
    "ribnode train-",
    "ribnode eval-",
    "rib-suppression.pt",
    "models.metrics",
    "docs/benchmarks/",
    "benchmarks/collect.py",
)


def test_docs_outside_the_lab_name_no_deleted_variant() -> None:
    """The variants not adopted, the old lab subcommands of `ribnode` and the old benchmark
    sections are history: only docs/lab/ may name them."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {name}"
        for path in sorted((ROOT / "docs").rglob("*.md"))
        if "lab" not in path.relative_to(ROOT / "docs").parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for name in DELETED_NAMES
        if name in line
    ]
    assert not found, "\n".join(found)
