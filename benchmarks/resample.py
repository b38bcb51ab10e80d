"""Which library resamples between the source matrix and the working resolution (and dilates masks)?

Compares, on a 2000x2000 float32 image to 512x512 and back (the working resolutions of the
models are 256..512):

* SimpleITK (Gaussian anti-alias + linear ``Resample`` with pixel-centre aligned physical
  geometry: origin ``(s - 1) / 2``, spacing ``s``),
* scipy.ndimage (Gaussian anti-alias + ``zoom(order=1, grid_mode=True)``, the same geometry),
* Pillow (``Image.resize`` of a mode ``F`` image, BILINEAR: its support widens when shrinking,
  so it anti-aliases by itself) -- what ``ribnode.models.preprocess`` uses, chosen by this
  benchmark.

Speed: median wall time of ``--repeats`` runs after one warm-up. Accuracy, all with the same
definition: (1) geometry, the error on a horizontal ramp in the interior against the
pixel-centre positions (a half-pixel shift would show as 0.5 * factor); (2) a round trip of a
disc + a rib-like band mask (linear down, linear up, threshold 0.5): IoU and centroid shift in
source pixels. Prints a Markdown section (the last run is in
``docs/lab/resample.md``). Run:

    .venv/bin/python benchmarks/resample.py --repeats 7
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

from ribnode.models import preprocess  # noqa: E402

Resampler = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


def with_simpleitk(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Gaussian anti-alias (sigma (factor - 1) / 2) + linear Resample, pixel-centre geometry."""
    src = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))
    sx, sy = image.shape[1] / shape[1], image.shape[0] / shape[0]
    if sx > 1.0 or sy > 1.0:
        sigma = [max((sx - 1.0) / 2.0, 1e-3), max((sy - 1.0) / 2.0, 1e-3)]
        src = sitk.SmoothingRecursiveGaussian(src, sigma)
    ref = sitk.Image(shape[1], shape[0], sitk.sitkFloat32)
    ref.SetSpacing((sx, sy))
    ref.SetOrigin((0.5 * sx - 0.5, 0.5 * sy - 0.5))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def with_scipy(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    factors = (shape[0] / image.shape[0], shape[1] / image.shape[1])
    sigma = [max(0.0, (1.0 / f - 1.0) / 2.0) for f in factors]
    source = ndimage.gaussian_filter(image, sigma, mode="nearest") if max(sigma) > 0 else image
    return ndimage.zoom(source, factors, order=1, grid_mode=True, mode="nearest")


def with_pillow(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The product path: ``ribnode.models.preprocess.to_source`` (Pillow BILINEAR, mode F)."""
    return preprocess.to_source(image, shape)


def timed(function: Resampler, image: np.ndarray, shape: tuple[int, int], repeats: int) -> float:
    function(image, shape)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(image, shape)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ramp_error(function: Resampler, size: int, working: int) -> float:
    """Max interior error of a ramp against the pixel-centre positions, in source pixels."""
    ramp = np.broadcast_to(np.arange(size, dtype=np.float32), (size, size)).copy()
    out = function(ramp, (working, working))
    centres = (np.arange(working) + 0.5) * size / working - 0.5
    interior = slice(working // 16, working - working // 16)
    return float(np.abs(out[working // 2, interior] - centres[interior]).max())


def round_trip(function: Resampler, size: int, working: int) -> tuple[float, float]:
    rows, cols = np.mgrid[0:size, 0:size]
    mask = ((rows - 0.41 * size) / (0.15 * size)) ** 2 + ((cols - 0.56 * size) / (0.2 * size)) ** 2 < 1
    band = (np.abs(rows - 0.77 * size) < 0.013 * size) & (np.abs(cols - 0.3 * size) < 0.2 * size)
    back = function(function((mask | band).astype(np.float32), (working, working)), (size, size)) >= 0.5
    iou = float((mask & back[:, :]).sum() + (band & back).sum()) / float(((mask | band) | back).sum())
    upper = slice(0, int(0.65 * size))
    shift = np.hypot(*(np.argwhere(back[upper]).mean(0) - np.argwhere(mask[upper]).mean(0)))
    return iou, float(shift)


def morphology(repeats: int) -> None:
    """Dilation of a 1955x1841 rib-like mask by a disc of 8 px: SimpleITK vs scipy."""
    rows, cols = np.mgrid[0:1955, 0:1841]
    mask = (np.sin(rows / 40.0) > 0.6) & (np.abs(cols - 920) > 60) & (np.abs(cols - 920) < 800)
    disc = np.hypot(*np.mgrid[-8:9, -8:9]) <= 8.5
    candidates = {
        "SimpleITK BinaryDilate (ball 8)": lambda: preprocess.dilate_mask(mask, 8),
        "scipy binary_dilation (disc 8.5)": lambda: ndimage.binary_dilation(mask, disc),
        "scipy distance_transform_edt <= 8.5": lambda: ndimage.distance_transform_edt(~mask) <= 8.5,
    }
    reference = preprocess.dilate_mask(mask, 8)
    print("\n| mask dilation, 1955x1841, radius 8 px | ms (median) | pixels differing from SimpleITK |")
    print("|---|---:|---:|")
    for name, function in candidates.items():
        out = function()
        milliseconds = timed(lambda image, shape: function(), mask, mask.shape, repeats) * 1000
        print(f"| {name} | {milliseconds:.1f} | {int((out != reference).sum())} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--working", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="SimpleITK threads (machine has 2)")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    rng = np.random.default_rng(0)
    image = rng.random((args.size, args.size), dtype=np.float32)
    small = rng.random((args.working, args.working), dtype=np.float32)
    big, work = (args.size, args.size), (args.working, args.working)
    print(f"## Resampling: SimpleITK vs scipy.ndimage vs Pillow ({args.size}^2 <-> {args.working}^2)\n")
    print(
        f"- date: {datetime.date.today().isoformat()}; machine: 2-core CPU, {cpu_model()}; "
        f"SimpleITK {sitk.Version.VersionString()} ({args.threads} threads)"
    )
    print(f"- command: `.venv/bin/python benchmarks/resample.py --repeats {args.repeats}`\n")
    print("| library | down ms (median) | up ms (median) | ramp error px | round-trip IoU | centroid shift px |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, function in (("SimpleITK", with_simpleitk), ("scipy.ndimage", with_scipy), ("Pillow", with_pillow)):
        down = timed(function, image, work, args.repeats) * 1000
        up = timed(function, small, big, args.repeats) * 1000
        error = ramp_error(function, args.size, args.working)
        iou, shift = round_trip(function, args.size, args.working)
        print(f"| {name} | {down:.1f} | {up:.1f} | {error:.3f} | {iou:.4f} | {shift:.3f} |")
    morphology(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
