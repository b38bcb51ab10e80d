"""Tiny random models exported through the lab's own export code (no shipped weights needed)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A 3-output segmenter and an estimator + refiner pair, random weights, written as the
    runtime reads them. The refiner's last convolution is randomised (training starts it at
    zero) so that the refiner changes the layer and its path is exercised."""
    torch = pytest.importorskip("torch", reason="the lab extra (make test installs it) builds the tiny models")
    from ribnode_lab.export import write_segmentation, write_suppression
    from ribnode_lab.train_suppression import Estimator, build_refiner
    from ribnode_lab.unet import UNet, UNetConfig

    torch.manual_seed(0)
    folder = Path(tmp_path_factory.mktemp("tiny-models"))
    seg = UNet(UNetConfig(in_channels=1, out_channels=3, base=4, depth=3)).eval()
    seg_path = write_segmentation(seg, folder, 64, {"note": "random test weights"})
    estimator = Estimator(UNetConfig(in_channels=1, out_channels=1, base=4, depth=3)).eval()
    refiner = build_refiner((8, 8))
    torch.nn.init.normal_(refiner.conv_out.weight, std=0.05)
    supp_path = write_suppression(estimator, refiner, folder, eta=0.02, training={"note": "random test weights"})
    return {"segmentation": seg_path, "suppression": supp_path, "estimator": estimator, "refiner": refiner}
