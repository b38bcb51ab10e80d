"""ONNX export, torch/ONNX Runtime parity, RibSegmenter, ``infer``, ``eval-seg`` and ``train-seg``.

Tiny random networks keep these fast; the shipped weights are tested in
``test_segmentation_shipped.py``. Parity tolerance: 1e-4 absolute on the logits (float32,
different kernels in torch and ORT; observed differences are ~1e-7).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from ribnode.cli import main
from ribnode.models.infer import run_infer
from ribnode.models.segmentation import RibSegmenter
from ribnode.models.segmentation.data import case_ids, split_cases
from ribnode.models.segmentation.runtime import select_providers

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from ribnode.models.segmentation.export import export_onnx, unet_from_onnx, write_config  # noqa: E402
from ribnode.models.segmentation.unet import UNet, UNetConfig  # noqa: E402

PARITY_ATOL = 1e-4
WORKING = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[UNet, Path]:
    """A random 3-level U-Net with non-trivial BatchNorm statistics, exported with its JSON."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = UNet(UNetConfig(base=4, depth=3))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 1, WORKING, WORKING))
    model.eval()
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(model, path, size=WORKING)
    write_config(model, path, WORKING)
    return model, path


def test_onnx_matches_torch_with_dynamic_batch_and_size(tiny: tuple[UNet, Path]) -> None:
    model, path = tiny
    x = torch.rand(2, 1, 64, 96, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == (2, 1, 64, 96)
    np.testing.assert_allclose(got, expected, atol=PARITY_ATOL, rtol=0)
    rebuilt = unet_from_onnx(path)  # torch model from the ONNX initializers
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt(x).numpy(), expected, atol=PARITY_ATOL, rtol=0)


def test_onnx_model_is_opset_17_or_newer(tiny: tuple[UNet, Path]) -> None:
    import onnx

    model = onnx.load(str(tiny[1]))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    onnx.checker.check_model(model)


def test_segmenter_maps_back_to_the_exact_source_matrix(tiny: tuple[UNet, Path]) -> None:
    segmenter = RibSegmenter(weights=tiny[1], device="cpu", threads=1)
    assert segmenter.working_size == WORKING
    assert segmenter.info.name == "ribnode rib-segmentation"
    assert segmenter.info.weights_sha256 == json.loads(tiny[1].with_suffix(".json").read_text())["sha256"]
    image = np.random.default_rng(2).random((300, 217)).astype(np.float32)
    result = segmenter.segment_image(image)
    assert result.mask.shape == result.probability.shape == (300, 217)
    assert result.mask.dtype == bool and result.probability.dtype == np.float32
    assert np.array_equal(result.mask, result.probability > 0.5)
    working = segmenter.predict_working(image)
    assert working.shape == (WORKING, WORKING) and 0.0 <= working.min() <= working.max() <= 1.0


def test_segmenter_checks_its_inputs(tiny: tuple[UNet, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        RibSegmenter(weights=tmp_path / "absent.onnx")
    with pytest.raises(ValueError, match="threshold"):
        RibSegmenter(weights=tiny[1], threshold=1.5)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(tiny[1].read_bytes())
    config = json.loads(tiny[1].with_suffix(".json").read_text())
    bad.with_suffix(".json").write_text(json.dumps({**config, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="sha256"):
        RibSegmenter(weights=bad)
    segmenter = RibSegmenter(weights=tiny[1], device="cpu", threads=1)
    with pytest.raises(ValueError, match="2-D"):
        segmenter.predict_working(np.zeros((3, 64, 64)))


def test_provider_selection() -> None:
    assert select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("auto", both)[0] == "CUDAExecutionProvider"
    assert select_providers("cpu", both) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="cuda"):
        select_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="device"):
        select_providers("tpu", both)


def _dicom(path: Path, shape: tuple[int, int]) -> Path:
    """A small MONOCHROME1, 12-bit, non-square radiograph written with pydicom."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, size=shape, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "TEST"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_infer_writes_masks_of_the_input_size(tiny: tuple[UNet, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    png8 = tmp_path / "eight.png"
    Image.fromarray(rng.integers(0, 256, (130, 90), dtype=np.uint8)).save(png8)
    png16 = tmp_path / "sixteen.png"
    Image.fromarray(rng.integers(0, 65536, (77, 101), dtype=np.uint16)).save(png16)
    dcm = _dicom(tmp_path / "chest.dcm", (120, 97))
    colour = tmp_path / "colour.png"
    Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(colour)
    out = tmp_path / "out"
    # Segmentation only (--no-soft): the rib-suppression output is tested with its own weights.
    code = main(["infer", str(png8), str(png16), str(dcm), str(colour), "--output", str(out),
                 "--weights", str(tiny[1]), "--device", "cpu", "--threads", "1", "--no-soft"])
    assert code == 1  # the colour PNG is reported and skipped, the others are written
    report = run_infer([colour], out, weights=tiny[1], device="cpu", threads=1, suppress=False)
    assert list(report.failed) == [colour] and "grayscale" in report.failed[colour]
    for stem, shape in (("eight", (130, 90)), ("sixteen", (77, 101)), ("chest", (120, 97))):
        mask = np.asarray(Image.open(out / f"{stem}-ribs.png"))
        assert mask.shape == shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
    assert not (out / "colour-ribs.png").exists()
    assert pydicom.dcmread(dcm).Rows == 120


def _pairs_folder(root: Path, count: int, size: int = 64) -> Path:
    """Stored-inverted source/target PNG pairs with rib-like bands (a miniature jsrt-bse-512)."""
    rows, cols = np.mgrid[0:size, 0:size]
    for sub in ("source", "target"):
        (root / sub).mkdir(parents=True)
    for index in range(count):
        soft = 0.4 + 0.1 * np.sin(cols / (9.0 + index))
        bone = 0.08 * (np.sin(rows / 3.0 + index) > 0.5) * (cols > 8) * (cols < size - 8)
        for sub, image in (("source", soft + bone), ("target", soft)):
            stored = np.rint((1 - image) * 255).astype(np.uint8)
            Image.fromarray(stored).save(root / sub / f"JPC{'LN' if index % 2 else 'NN'}{index:03d}.png")
    return root


def test_eval_seg_prints_per_image_mean_and_worst(
        tiny: tuple[UNet, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _pairs_folder(tmp_path / "pairs", 3)
    report_path = tmp_path / "report.json"
    assert main(["eval-seg", "--data", str(data), "--weights", str(tiny[1]), "--threads", "1",
                 "--json", str(report_path)]) == 0
    text = capsys.readouterr().out
    assert "JPCNN000" in text and "mean" in text and "worst:" in text
    report = json.loads(report_path.read_text())
    assert report["count"] == 3 and len(report["images"]) == 3
    assert report["min_dice"] == min(r["dice"] for r in report["images"])
    assert 0.0 <= report["mean"]["dice"] <= 1.0


def test_train_seg_runs_checkpoints_and_exports(tmp_path: Path) -> None:
    data = _pairs_folder(tmp_path / "pairs", 6)
    out = tmp_path / "run"
    args = ["train-seg", "--data", str(data), "--output", str(out), "--epochs", "2",
            "--batch-size", "2", "--working-size", "32", "--held-out", "2", "--base", "4",
            "--depth", "2", "--device", "cpu", "--seed", "5"]
    assert main(args) == 0
    config = json.loads((out / "rib-segmentation.json").read_text())
    assert config["working_size"] == 32 and config["training"]["epochs_completed"] == 2
    assert len(config["training"]["split"]["held_out"]) == 2
    assert config["training"]["seed"] == 5
    # --seed moves the weights, not the held-out cases: those follow --split-seed
    assert config["training"]["split"]["held_out"] == split_cases(case_ids(data), 2, 20260121)[1]
    # the record names the label definition the run used (local-open by default), not another one
    assert config["training"]["config"]["labels"] == "local-open"
    assert "local-open derivation" in config["training"]["data"]
    assert "reference derivation" not in config["training"]["data"]
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    segmenter = RibSegmenter(weights=out / "rib-segmentation.onnx", device="cpu", threads=1)
    assert segmenter.segment_image(np.random.rand(50, 70)).mask.shape == (50, 70)


def test_synthetic_training_chests_take_the_real_pairs_label_rule() -> None:
    from ribnode.models.segmentation.data import rib_mask
    from ribnode.models.segmentation.train import TrainConfig, prepare_pair, synthetic_tensors
    from ribnode.models.synthetic import generate_chest

    def labels_of(rule: str) -> np.ndarray:
        tensors = synthetic_tensors(TrainConfig(data="unused", working_size=64, synthetic=1,
                                                labels="local-open", synthetic_labels=rule))
        assert tensors is not None
        return tensors[1][0, 0].numpy()

    chest = generate_chest(seed=TrainConfig(data="unused").seed + 1000, size=512, nodules=2)
    assert chest.lung_mask is not None
    derived = rib_mask(chest.radiograph, chest.soft_tissue, labels="local-open")
    want = {
        "in-lung": prepare_pair(chest.radiograph, derived & chest.lung_mask, 64)[1],
        "whole": prepare_pair(chest.radiograph, derived, 64)[1],
        "exact": prepare_pair(chest.radiograph, chest.rib_mask, 64)[1],
    }
    for rule, expected in want.items():
        assert np.array_equal(labels_of(rule), expected), rule
    # the three rules differ on this chest; in-lung labels lie within the whole-chest ones
    assert not np.array_equal(want["in-lung"], want["whole"])
    assert not np.array_equal(want["whole"], want["exact"])
    assert (want["in-lung"] <= want["whole"] + 1e-6).all()
    assert TrainConfig(data="unused").synthetic_labels == "in-lung"
    with pytest.raises(ValueError):
        synthetic_tensors(TrainConfig(data="unused", synthetic=1, synthetic_labels="other"))


def test_bone_head_target_is_the_bone_layer_in_the_inputs_units() -> None:
    from ribnode.models.segmentation.normalisation import to_working
    from ribnode.models.segmentation.train import BONE_TARGET_SCALE, prepare_bone

    rng = np.random.default_rng(3)
    soft = rng.uniform(0.2, 0.6, (128, 128)).astype(np.float32)
    bone = np.zeros_like(soft)
    bone[40:80, :] = 0.05  # a flat 40-px band of bone, 0.05 of full scale
    target = prepare_bone(soft + bone, soft, 64)
    inside, outside = target[24:36, 8:56], target[:12, 8:56]
    # the band, divided by the width of the percentile window that normalise puts on the
    # working-size radiograph (the network's input), times the scale
    low, high = np.percentile(to_working(soft + bone, 64), [1.0, 99.0])
    assert np.allclose(inside, BONE_TARGET_SCALE * 0.05 / (high - low), rtol=0.05)
    assert np.abs(outside).max() < 1e-6
    # a detector's gain and offset do not move it: the head learns the bone's share of the input
    assert np.allclose(prepare_bone(3 * (soft + bone) + 0.1, 3 * soft + 0.1, 64), target, atol=1e-4)
    assert not np.allclose(prepare_bone(soft + 2 * bone, soft, 64), target, atol=1e-2)


def test_train_seg_bone_head_trains_and_is_dropped_at_export(tmp_path: Path) -> None:
    from ribnode.models.segmentation.train import load_model

    data = _pairs_folder(tmp_path / "pairs", 6)
    out = tmp_path / "run"
    args = ["train-seg", "--data", str(data), "--output", str(out), "--epochs", "2",
            "--batch-size", "2", "--working-size", "32", "--held-out", "2", "--base", "4",
            "--depth", "2", "--device", "cpu", "--seed", "5", "--bone-weight", "1"]
    assert main(args) == 0
    trained, state = load_model(out / "checkpoint.pt")
    assert trained.bone is not None and "bone.weight" in state["model"]
    config = json.loads((out / "rib-segmentation.json").read_text())
    assert config["training"]["config"]["bone_weight"] == 1.0
    assert config["architecture"]["bone_head"] is False and config["architecture"]["out_channels"] == 1
    assert config["architecture"]["trained_with_bone_head"] is True
    exported = unet_from_onnx(out / "rib-segmentation.onnx")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        logits, bone = trained.forward_with_bone(x)
        assert torch.allclose(exported(x), logits, atol=PARITY_ATOL)
        assert bone.shape == logits.shape
    session = ort.InferenceSession(str(out / "rib-segmentation.onnx"), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == 1
    with pytest.raises(ValueError):  # a network without the head cannot pretend to have one
        exported.forward_with_bone(x)
