"""build_outputs as a whole: determinism, provenance, private block, torch-free import."""

from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import OutputSet, ResultSeries, build_outputs, result_series
from ribnode.dicom_sr.provenance import describe_standard, read_private_block
from tests.dicom_sr.conftest import write_outputs
from tests.dicom_sr.inputs import CREATED, SEG_MODEL, SUP_MODEL, model_inputs, synthetic_dx

DxOutputs = tuple[pydicom.Dataset, OutputSet, dict[str, Path]]


def _uids(outputs: OutputSet) -> list[tuple[str, str]]:
    return [(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in outputs.datasets()]


def test_rerun_gives_identical_objects(tmp_path: Path) -> None:
    source = synthetic_dx(rows=96, columns=80)
    segmentation, suppression = model_inputs(source)
    first = write_outputs(
        build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED), tmp_path / "a"
    )
    second = write_outputs(
        build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED), tmp_path / "b"
    )
    for kind in ("sc", "seg", "sr"):
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind


def test_uids_stable_across_time_and_distinct_per_kind() -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    now = build_outputs(source, segmentation, suppression, OutputSettings())
    later = build_outputs(
        source, segmentation, suppression, OutputSettings(), created=CREATED + datetime.timedelta(days=3)
    )
    assert _uids(now) == _uids(later)
    flat = [uid for pair in _uids(now) for uid in pair]
    assert len(set(flat)) == 6


def _with(suppression: object, **changes: object) -> object:
    return dataclasses.replace(suppression, **changes)  # type: ignore[type-var]


def _variants(source: pydicom.Dataset) -> dict[str, tuple[object, object, OutputSettings]]:
    """One change at a time of everything that changes the objects' bytes."""
    segmentation, suppression = model_inputs(source)
    base = OutputSettings()
    other_pixels = suppression.soft_stored.copy()
    other_pixels[40, 40] += 1
    seg_params = dataclasses.replace(SEG_MODEL, parameters={"threshold": 0.6})
    sup_version = dataclasses.replace(SUP_MODEL, version="1.0.1")
    return {
        "steps": (segmentation, _with(suppression, steps=2), base),
        "seed": (segmentation, _with(suppression, seed=43), base),
        "working size": (segmentation, _with(suppression, working_size=256), base),
        "one pixel": (segmentation, _with(suppression, soft_stored=other_pixels), base),
        "suppression version": (segmentation, _with(suppression, model=sup_version), base),
        "segmentation parameter": (dataclasses.replace(segmentation, model=seg_params), suppression, base),
        "label off": (segmentation, suppression, OutputSettings(burned_in_label=False)),
        "own window": (segmentation, suppression, OutputSettings(sc_window="own")),
        "no private block": (segmentation, suppression, OutputSettings(private_block=False)),
        "node id": (segmentation, suppression, OutputSettings(node_id="node-2")),
    }


@pytest.mark.parametrize("change", list(_variants(synthetic_dx(rows=64, columns=64))))
def test_other_content_gets_other_uids(change: str) -> None:
    """Regression (issue 26, 1): UIDs came from the source UID, the weights hash and the kind
    only, so 2 sampling steps instead of 1, or the label turned on, kept the SC's UID while its
    pixels differed, and a PACS that keeps the first copy silently hid the new result."""
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    base = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    seg2, sup2, settings = _variants(source)[change]
    other = build_outputs(source, seg2, sup2, settings, created=CREATED)  # type: ignore[arg-type]
    for old, new in zip(base.datasets(), other.datasets()):
        same_bytes = _encoded(old) == _encoded(new)
        assert (old.SOPInstanceUID == new.SOPInstanceUID) == same_bytes, (change, old.Modality)
    assert other.sc.SOPInstanceUID != base.sc.SOPInstanceUID or change == "segmentation parameter"
    assert other.sr.SOPInstanceUID != base.sr.SOPInstanceUID
    assert other.sr.SeriesInstanceUID != base.sr.SeriesInstanceUID or change in ("seed", "one pixel")


def _encoded(dataset: pydicom.Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_sources_of_a_study_share_one_series_per_kind() -> None:
    """Regression (issue 26, 5): a 3-image study gave nine series, three each numbered 9901,
    9902 and 9903 with identical descriptions."""
    sources = [synthetic_dx(rows=64, columns=64, seed=0) for _ in range(3)]
    for index, source in enumerate(sources):
        source.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{index + 1}"
        source.InstanceNumber = index + 1
    sources[2].ViewPosition = "LL"
    series = result_series(sources)
    assert series == ResultSeries(("LL", "PA"))
    sets = [build_outputs(s, *model_inputs(s), OutputSettings(), created=CREATED, series=series) for s in sources]
    for kind in range(3):
        datasets = [output.datasets()[kind] for output in sets]
        assert len({d.SeriesInstanceUID for d in datasets}) == 1
        assert len({d.SOPInstanceUID for d in datasets}) == 3
        assert [int(d.InstanceNumber) for d in datasets] == [1, 2, 3]
        assert datasets[0].SeriesDescription.endswith(" LL, PA")
    numbers = [int(d.SeriesNumber) for d in sets[0].datasets()]
    assert numbers == [9901, 9902, 9903]
    descriptions = {d.SeriesDescription for d in sets[0].datasets()}
    assert len(descriptions) == 3


def test_a_rerun_names_what_it_replaces() -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    first = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    previous = {
        kind: [
            {
                "sop_instance_uid": str(d.SOPInstanceUID),
                "series_instance_uid": str(d.SeriesInstanceUID),
                "study_instance_uid": str(d.StudyInstanceUID),
                "sop_class_uid": str(d.SOPClassUID),
            }
        ]
        for kind, d in zip(("sc", "seg", "sr"), first.datasets())
    }
    again = build_outputs(
        source, segmentation, _with(suppression, steps=1), OutputSettings(), created=CREATED, previous=previous
    )
    item = again.sr.PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == source.StudyInstanceUID
    assert item.ReferencedSeriesSequence[0].SeriesInstanceUID == first.sr.SeriesInstanceUID
    assert item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.sr.SOPInstanceUID
    assert again.provenance["sc"]["replaces"] == first.sc.SOPInstanceUID
    assert again.provenance["seg"]["replaces"] is None  # the same SEG: nothing replaced
    # The same run again names the same predecessor, so it stays byte-identical.
    same = build_outputs(
        source,
        segmentation,
        _with(suppression, steps=1),
        OutputSettings(),
        created=CREATED,
        previous={"sr": [again.provenance["sr"], *previous["sr"]]},
    )
    assert _encoded(same.sr) == _encoded(again.sr)


def test_new_weights_give_new_uids() -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    base = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    new_sup = dataclasses.replace(SUP_MODEL, weights_sha256="c3" * 32)
    segmentation2, suppression2 = model_inputs(source, sup_model=new_sup)
    other = build_outputs(source, segmentation2, suppression2, OutputSettings(), created=CREATED)
    assert other.sc.SOPInstanceUID != base.sc.SOPInstanceUID
    assert other.sr.SOPInstanceUID != base.sr.SOPInstanceUID
    # The SEG depends on the segmentation weights only: it is the same object.
    assert other.seg.SOPInstanceUID == base.seg.SOPInstanceUID


def test_provenance_record(dx_outputs: DxOutputs) -> None:
    source, outputs, _ = dx_outputs
    record = json.loads(json.dumps(outputs.provenance))
    assert set(record) == {"sc", "seg", "sr"}
    for kind, dataset in zip(("sc", "seg", "sr"), outputs.datasets()):
        item = record[kind]
        assert item["kind"] == kind
        assert item["sop_instance_uid"] == dataset.SOPInstanceUID
        assert item["series_instance_uid"] == dataset.SeriesInstanceUID
        assert item["sop_class_uid"] == dataset.SOPClassUID
        assert item["source_sop_instance_uid"] == source.SOPInstanceUID
        assert item["created"] == CREATED.isoformat()
        assert {m["weights_sha256"] for m in item["models"]} >= {SEG_MODEL.weights_sha256}
    assert record["sc"]["seed"] == 42 and record["sc"]["steps"] == 4
    assert record["sc"]["working_size"] == 512
    assert record["seg"]["seed"] is None


def test_private_block_repeats_the_provenance(dx_outputs: DxOutputs) -> None:
    _, outputs, paths = dx_outputs
    for kind in ("sc", "seg", "sr"):
        dataset = pydicom.dcmread(paths[kind])
        assert read_private_block(dataset) == json.loads(json.dumps(outputs.provenance[kind]))
        assert dataset.private_block(0x0071, "RIBNODE 1")[0x01].value == "YES"


def test_private_block_can_be_switched_off() -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(private_block=False), created=CREATED)
    assert all(read_private_block(d) is None for d in outputs.datasets())


def test_settings_reach_every_object() -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    settings = OutputSettings(content_qualification="PRODUCT", node_id="node-7", institution_name="General Hospital")
    outputs = build_outputs(source, segmentation, suppression, settings, created=CREATED)
    for dataset in outputs.datasets():
        assert dataset.ContentQualification == "PRODUCT"
        assert dataset.DeviceSerialNumber == "node-7"
        assert dataset.InstitutionName == "General Hospital"
        assert dataset.Manufacturer == "ribnode"


def test_dicom_sr_imports_no_torch() -> None:
    code = (
        "import sys, ribnode.dicom_sr; "
        "bad = [m for m in ('torch', 'onnxruntime', 'diffusers') if m in sys.modules]; "
        "sys.exit(', '.join(bad) or None)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_qa_reads_the_provenance_from_standard_attributes_alone(tmp_path: Path) -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(private_block=False), created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    for kind, path in paths.items():
        info = describe_standard(pydicom.dcmread(path))
        assert source.SOPInstanceUID in info["derived_from"], kind
        assert info["content_qualification"] == "RESEARCH"
        models = {item["model"]: item for item in info["ai_equipment"]}
        seg_item = models["ribnode rib-segmentation"]
        assert SEG_MODEL.weights_sha256 in seg_item["contribution_description"]
        assert seg_item["software_versions"][0] == SEG_MODEL.version
        assert seg_item["contribution_datetime"].startswith("20261121010203")
        if kind != "seg":
            sup_item = models["ribnode rib-suppression"]
            assert SUP_MODEL.weights_sha256 in sup_item["contribution_description"]
    sc = describe_standard(pydicom.dcmread(paths["sc"]))
    assert sc["synthetic_data"] == "YES"
    assert sc["series_description"].startswith("AI SYNTHETIC")
    synthesizing = [i for i in sc["ai_equipment"] if "109100" in i["purpose"]]
    assert [i["model"] for i in synthesizing] == ["ribnode rib-suppression"]


def test_unknown_source_class_is_named() -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    source.SOPClassUID = "1.2.3.4.5"
    with pytest.raises(ValueError, match="1.2.3.4.5 is not a standard image storage class"):
        build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)


@pytest.mark.parametrize("keyword", ["PatientBirthDate", "PatientSex", "StudyDate", "AccessionNumber"])
def test_source_without_a_type2_attribute_still_gives_valid_outputs(keyword: str, tmp_path: Path) -> None:
    """Modalities leave Type 2 patient/study attributes out; the outputs carry them empty."""
    from tests.dicom_sr.validation import assert_valid

    source = synthetic_dx()
    if keyword in source:
        delattr(source, keyword)
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    assert keyword not in source  # the caller's dataset is left alone
    for kind, path in write_outputs(outputs, tmp_path).items():
        assert_valid(path)
        assert pydicom.dcmread(path).get(keyword, "missing") in ("", None), (kind, keyword)


def test_contribution_description_names_each_parameter_once() -> None:
    from ribnode.dicom_sr.provenance import contribution_description
    from ribnode.models.info import ModelInfo

    model = ModelInfo(
        "ribnode rib-suppression", "2.0.0", "ab" * 32, {"steps": 1, "working_size": 512, "backend": "onnx"}
    )
    text = contribution_description(model, seed=7, steps=3, working_size=512)
    assert text.count("steps") == 1 and "steps 3" in text and "steps 1" not in text
    assert text.count("512") == 2 and "working resolution 512x512" in text  # once, as "512x512"
    assert "backend onnx" in text and "seed 7" in text
    # without the run's values, the model's own parameters are listed
    assert "steps 1" in contribution_description(model)


def test_a_changed_source_header_changes_the_uids() -> None:
    """What the outputs copy from the source (patient, study, nested sequences) is content too."""
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    base = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "1", "99X", "a"
    source.ProcedureCodeSequence = [item]
    first = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    assert first.sc.SOPInstanceUID != base.sc.SOPInstanceUID
    item.CodeMeaning = "b"  # only inside a sequence
    second = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    assert second.sc.SOPInstanceUID != first.sc.SOPInstanceUID
