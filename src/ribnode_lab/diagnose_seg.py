"""What limits the rib segmentation: the figures of ``docs/lab/2026-12-07-models.md``.

``python -m ribnode_lab.diagnose_seg [--data ../shared/data] [--runs 12]`` prints, for the
shipped models on the held-out pairs:

- the reference masks taken to the working size and back (the ceiling the size imposes);
- rib Dice on training pairs against held-out pairs (over- or under-fitting);
- the reference rule applied to the suppression's estimated layer (how good a rib mask the
  bone-layer estimate allows);
- pooled precision and recall;
- the reference rule's sensitivity: its masks from the true layer changed slightly (threshold,
  gain, offset, noise, blur), against the reference (``--labels-only`` prints only this);
- for nodules added to the radiograph (radius 8 px, contrast 0.04, three per run): the mask
  pixels changed farther than 2 px outside the discs, whether the input's normalisation moved,
  and how far from the discs the changed pixels lie.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from ribnode.models.preprocess import to_source, to_working
from ribnode.models.segmentation.runtime import RibSegmenter
from ribnode.models.suppression.runtime import RibSuppressor
from ribnode_lab.data import Case, bone_layer_mask, load_cases, nodule
from ribnode_lab.evaluate import draw_placements, location_masks
from ribnode_lab.metrics import dice


def size_ceiling(cases: list[Case], size: int) -> list[float]:
    out = []
    for case in cases:
        working = to_working(case.ribs.astype(np.float32), size)
        out.append(dice(to_source(working, case.ribs.shape, "linear") > 0.5, case.ribs))
    return out


def stability(segmenter: RibSegmenter, cases: list[Case], runs: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    flips, distances, moved = [], [], 0
    rows, cols = np.ogrid[:512, :512]
    for k in range(runs):
        case = cases[k % len(cases)]
        placements = draw_placements(location_masks(case, case.ribs), rng)
        if placements is None:
            continue
        added = np.sum([nodule(case.image.shape, p.centre, 8, 0.04) for p in placements], axis=0)
        image2 = np.clip(case.image + added, 0, 1).astype(np.float32)
        before, after = segmenter.segment_image(case.image), segmenter.segment_image(image2)
        window = [np.percentile(to_working(x, segmenter.working_size), [1, 99]) for x in (case.image, image2)]
        moved += int(not np.array_equal(*window))
        discs = np.any([(rows - p.centre[0]) ** 2 + (cols - p.centre[1]) ** 2 <= 64 for p in placements], axis=0)
        distance = ndimage.distance_transform_edt(~discs)
        changed = [(before.structures[n] ^ after.structures[n]) & (distance > 2) for n in before.structures]
        flips.append(sum(int(c.sum()) for c in changed))
        distances.extend(distance[np.any(changed, axis=0)].tolist())
    d = np.asarray(distances)
    return {
        "runs": len(flips),
        "flipped_per_run": float(np.mean(flips)),
        "window_moved_runs": moved,
        "median_distance_px": float(np.median(d)) if d.size else 0.0,
        "share_beyond_64_px": float((d > 64).mean()) if d.size else 0.0,
    }


def label_sensitivity(cases: list[Case]) -> dict[str, list[float]]:
    """Dice against the reference masks of the reference rule applied to the *true* bone layer
    changed slightly: how exactly a layer must be known for its rib mask to reach a Dice."""
    rng = np.random.default_rng(0)
    changes = {
        "threshold 0.018": lambda b: bone_layer_mask(b, 0.018),
        "threshold 0.022": lambda b: bone_layer_mask(b, 0.022),
        "layer x 0.9": lambda b: bone_layer_mask(0.9 * b),
        "layer x 1.1": lambda b: bone_layer_mask(1.1 * b),
        "layer + 0.003": lambda b: bone_layer_mask(b + 0.003),
        "layer - 0.003": lambda b: bone_layer_mask(b - 0.003),
        "noise sd 1/255": lambda b: bone_layer_mask(b + rng.normal(0, 1 / 255, b.shape)),
        "noise sd 2/255": lambda b: bone_layer_mask(b + rng.normal(0, 2 / 255, b.shape)),
        "layer blurred, sigma 2 px": lambda b: bone_layer_mask(ndimage.gaussian_filter(b, 2.0)),
        "layer blurred, sigma 4 px": lambda b: bone_layer_mask(ndimage.gaussian_filter(b, 4.0)),
    }
    out: dict[str, list[float]] = {name: [] for name in changes}
    for case in cases:
        layer = case.bone.astype(np.float64)
        for name, change in changes.items():
            out[name].append(dice(change(layer), case.ribs))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--labels-only", action="store_true", help="only the reference rule's sensitivity")
    args = parser.parse_args(argv)
    train, held = load_cases(args.data)
    train, held = [c for c in train if c.paired], [c for c in held if c.paired]
    for name, values in label_sensitivity(held).items():
        print(f"reference rule on the true layer, {name}: Dice {np.mean(values):.3f} (worst {min(values):.3f})")
    if args.labels_only:
        return
    segmenter, suppressor = RibSegmenter(threads=2), RibSuppressor(threads=2)
    for size in (256, 384):
        values = size_ceiling(held, size)
        print(f"reference masks through {size} px and back: Dice {np.mean(values):.4f} (worst {min(values):.4f})")
    for name, cases in (("training (first 40)", train[:40]), ("held out", held)):
        values = [dice(segmenter.segment_image(c.image).structures["ribs"], c.ribs) for c in cases]
        print(f"rib Dice, {name}: {np.mean(values):.4f} (worst {min(values):.4f})")
    thresholds = (0.010, 0.0125, 0.015, 0.0175, 0.020)
    by_threshold: dict[float, list[float]] = {t: [] for t in thresholds}
    tp = fp = fn = 0
    for case in held:
        layer, _ = suppressor.estimate(case.image, 0, refine=False)
        bone = to_source(layer, case.image.shape, "linear").astype(np.float64)
        for t in thresholds:
            by_threshold[t].append(dice(bone_layer_mask(bone, t), case.ribs))
        mask = segmenter.segment_image(case.image).structures["ribs"]
        tp, fp, fn = (
            tp + int((mask & case.ribs).sum()),
            fp + int((mask & ~case.ribs).sum()),
            fn + int((~mask & case.ribs).sum()),
        )
    for t, values in by_threshold.items():
        print(f"reference rule on the estimated layer, threshold {t}: Dice {np.mean(values):.4f}")
    print(f"pooled precision {tp / (tp + fp):.3f}, recall {tp / (tp + fn):.3f}")
    print("stability:", stability(segmenter, held, args.runs))


if __name__ == "__main__":
    main()
