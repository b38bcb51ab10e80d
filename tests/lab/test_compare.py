"""``ribnode-lab compare``: paired differences of two eval JSONs, matched case by case."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest


def _eval(values: dict[str, float]) -> dict:
    rows = [{"case": case, "refined": {"bsr": bsr, "ssim": 0.99}, "note": "x"} for case, bsr in values.items()]
    return {"cases": rows}


def test_compare_pairs_cases_by_id_and_reports_the_standard_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from ribnode_lab.cli import main
    from ribnode_lab.evaluate import compare

    before = _eval({"A": 0.70, "B": 0.80, "C": 0.60, "D": 0.50})
    after = _eval({"C": 0.64, "A": 0.71, "B": 0.79, "E": 0.99})  # E has no partner, D no successor
    rows = compare(before, after)
    assert set(rows) == {"refined.bsr", "refined.ssim"}  # strings are not figures
    bsr = rows["refined.bsr"]
    assert bsr["n"] == 3 and bsr["higher"] == 2
    assert bsr["diff"] == pytest.approx((0.01 - 0.01 + 0.04) / 3)
    assert bsr["se"] == pytest.approx(statistics.stdev([0.01, -0.01, 0.04]) / 3**0.5)
    assert rows["refined.ssim"] == {"diff": 0.0, "se": 0.0, "higher": 0, "n": 3}
    (tmp_path / "a.json").write_text(json.dumps(before))
    (tmp_path / "b.json").write_text(json.dumps(after))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "refined.bsr" in capsys.readouterr().out
