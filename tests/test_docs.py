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


def test_lesion_runs_split_by_cases_merge_into_the_single_run_summary() -> None:
    """benchmarks/lesions_table.py --merge re-summarises the single trials of runs over disjoint
    cases (eval-lesions --skip/--limit), and refuses runs that share a case."""
    import pytest

    from ribnode.models.suppression.lesions import LesionTrial, summarise

    table = _load(ROOT / "benchmarks" / "lesions_table.py", "ribnode_lesions_table")
    trials = [LesionTrial(f"JPCNN{i:03d}", loc, 3.0, 0.02, 0.5 + 0.1 * i + (loc == "lung") * 0.3, 0.001 * i)
              for i in range(4) for loc in ("rib", "lung")]
    whole = [{"location": k[0], "radius_512": k[1], "contrast": k[2], **v} for k, v in summarise(trials).items()]
    parts = [{"trials": [vars(t) for t in trials if t.case_id in cases]}
             for cases in (("JPCNN000", "JPCNN001"), ("JPCNN002", "JPCNN003"))]
    merged = table.merged(parts)
    assert merged["cells"] == whole and merged["cases"] == [f"JPCNN{i:03d}" for i in range(4)]
    assert whole[1]["retention_min"] == 0.5 and whole[1]["n"] == 4.0  # rib cell: the first trial's value
    with pytest.raises(ValueError, match="share cases"):
        table.merged([parts[0], parts[0]])
