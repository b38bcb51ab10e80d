"""``ribnode provenance``: the handler prints what QA needs, from the written files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pydicom
import pytest

from ribnode.demo.orthanc import OrthancServer
from ribnode.dicom_sr import OutputSet
from ribnode.dicom_sr.cli import add_commands
from tests.dicom_sr.inputs import SUP_MODEL


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ribnode")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_provenance_json(
    dx_outputs: tuple[pydicom.Dataset, OutputSet, dict[str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    source, outputs, paths = dx_outputs
    args = _parse(["provenance", "--json", *map(str, paths.values())])
    assert args.handler(args) == 0
    infos = json.loads(capsys.readouterr().out)
    assert [info["modality"] for info in infos] == ["OT", "SEG", "SR"]
    assert all(source.SOPInstanceUID in info["derived_from"] for info in infos)
    assert infos[0]["private_record"]["sop_instance_uid"] == outputs.sc.SOPInstanceUID


def test_provenance_text_and_missing_file(
    dx_outputs: tuple[pydicom.Dataset, OutputSet, dict[str, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, _, paths = dx_outputs
    args = _parse(["provenance", str(paths["sc"])])
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    assert "Synthesizing Equipment" in text and SUP_MODEL.weights_sha256 in text
    args = _parse(["provenance", str(tmp_path / "absent.dcm")])
    assert args.handler(args) == 1


def test_provenance_reads_what_the_pacs_holds_over_dicomweb(
    dx_outputs: tuple[pydicom.Dataset, OutputSet, dict[str, Path]],
    orthanc: OrthancServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Regression (issue 26, 6): ``ribnode provenance`` accepted only local files."""
    source, outputs, paths = dx_outputs
    for path in paths.values():
        orthanc.upload(path)
    base = f"{orthanc.dicomweb_url}/studies/{source.StudyInstanceUID}"
    sc = outputs.sc
    instance = f"{base}/series/{sc.SeriesInstanceUID}/instances/{sc.SOPInstanceUID}"
    args = _parse(["provenance", "--json", instance, f"{base}/series/{outputs.sr.SeriesInstanceUID}"])
    assert args.handler(args) == 0
    infos = json.loads(capsys.readouterr().out)
    assert [info["modality"] for info in infos] == ["OT", "SR"]
    assert infos[0]["private_record"]["sop_instance_uid"] == sc.SOPInstanceUID
    assert all(info["ai_equipment"][0]["device_uid"] for info in infos)
    args = _parse(["provenance", f"{base}/series/1.2.3.4"])
    assert args.handler(args) == 1
    assert "cannot read" in capsys.readouterr().out
