"""The documentation that is derived from code stays in step with it."""

from __future__ import annotations

import importlib.util
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


def test_benchmarks_md_is_assembled_from_its_sections() -> None:
    """docs/benchmarks.md is what benchmarks/collect.py builds from docs/benchmarks/*.md."""
    collect = _load(ROOT / "benchmarks" / "collect.py", "ribnode_benchmarks_collect")
    assert (ROOT / "docs" / "benchmarks.md").read_text() == collect.assemble()
