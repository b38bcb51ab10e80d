"""``ribnode demo`` (what ``make demo`` runs): the same code, run as a command, closes the loop
and leaves valid outputs; with ``--orthanc`` the results land in Orthanc's copy of the study."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.e2e.helpers import AI_DESCRIPTIONS, check_object, require_weights


def _demo(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    require_weights()
    out = tmp_path / "demo-output"
    argv = [
        sys.executable,
        "-m",
        "ribnode",
        "demo",
        "--work-dir",
        str(tmp_path / "work"),
        "--output",
        str(out),
        "--size",
        "768",
        "--steps",
        "2",
        "--timeout",
        "180",
        *extra,
    ]
    env = dict(os.environ, RIBNODE_MODELS__INTRA_OP_THREADS="1")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, f"demo failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result, out


def _check_outputs(out: Path, stdout: str) -> None:
    datasets = {kind: check_object(out / f"{kind}.dcm", kind) for kind in ("sc", "seg", "sr")}
    for kind, ds in datasets.items():
        assert ds.SeriesDescription.startswith(AI_DESCRIPTIONS[kind] + " ")
    study = {str(ds.StudyInstanceUID) for ds in datasets.values()}
    assert len(study) == 1 and study.pop() in stdout
    png = Image.open(out / "before-after.png")
    sc = datasets["sc"]
    assert png.width == 4 * round((png.height - 28) * sc.Columns / sc.Rows)
    panels = np.asarray(png.convert("L"))[28:].reshape(png.height - 28, 4, -1).transpose(1, 0, 2)
    assert panels[0].std() > 10 and panels[1].std() > 10  # images, not blank tiles
    assert 0 < (panels[3] > 127).mean() < 0.5  # the rib mask tile shows a mask
    for text in (
        "Times from the end of the C-STORE",
        "Three objects in study",
        "Synthesizing Equipment",
        "weights sha256:",
        "derived from",
    ):
        assert text in stdout, f"summary lacks {text!r}"


def test_demo_closes_the_loop(tmp_path: Path) -> None:
    result, out = _demo(tmp_path)
    _check_outputs(out, result.stdout)
    assert "job 1: done" in result.stdout


def test_demo_with_orthanc_shows_the_series_in_the_study(tmp_path: Path) -> None:
    if not any(Path(d, "Orthanc").exists() for d in os.environ["PATH"].split(os.pathsep)):
        pytest.skip("Orthanc is not installed")
    result, out = _demo(tmp_path, "--orthanc")
    _check_outputs(out, result.stdout)
    listing = result.stdout.split("Orthanc (")[-1]
    for description in AI_DESCRIPTIONS.values():
        assert f'"{description} ' in listing
    assert str(pydicom.dcmread(out / "sc.dcm").StudyInstanceUID) in listing


def test_demo_fails_early_with_the_reason_when_weights_are_missing(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "ribnode",
        "demo",
        "--work-dir",
        str(tmp_path / "work"),
        "--output",
        str(tmp_path / "out"),
    ]
    env = dict(os.environ, RIBNODE_MODELS__SUPPRESSION_WEIGHTS=str(tmp_path / "absent.onnx"))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    assert "suppression weights" in result.stderr and "absent.onnx" in result.stderr
    assert not (tmp_path / "out" / "before-after.png").exists()
