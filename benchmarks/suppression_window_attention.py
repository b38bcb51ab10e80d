"""Which part of the network the denoiser window matters to: the mid-block self-attention alone.

Runs the shipped torch weights on the whole 512 working image twice, on the held-out pairs
(pairs' rib masks, seed 0, the model's default steps): as trained, and with only the mid-block
attention (its GroupNorm included) applied to 16x16-token windows, the token count it saw on
128-px training crops. Every other layer, GroupNorm included, still sees the whole image. If
the BSR does not move, the window's gain (``suppression_windows.py``) comes from the
statistics of the other GroupNorm layers, not from the attention.

    .venv/bin/python benchmarks/suppression_window_attention.py --limit 25
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.suppression.data import DEFAULT_DATA, load_pairs  # noqa: E402
from ribnode.models.suppression.evaluate import evaluate_pairs, summary  # noqa: E402
from ribnode.models.suppression.runtime import DEFAULT_TORCH, RibSuppressor  # noqa: E402

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)


class WindowedBlock(torch.nn.Module):
    """Apply ``inner`` (a module on (B, C, H, W)) to non-overlapping ``side`` x ``side`` windows."""

    def __init__(self, inner: torch.nn.Module, side: int) -> None:
        super().__init__()
        self.inner, self.side = inner, side

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.side
        if h % s or w % s:
            raise ValueError(f"feature map {h}x{w} is not a whole number of {s}x{s} windows")
        windows = x.view(b, c, h // s, s, w // s, s).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, s, s)
        out = self.inner(windows, *args, **kwargs)
        return out.view(b, h // s, w // s, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="first N held-out cases only (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=16, help="window side in tokens of the mid block")
    args = parser.parse_args()
    print(f"# BSR with the mid-block attention windowed, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {cpu_model()}; threads {args.threads}; command: {' '.join(sys.argv)}\n")
    sup = RibSuppressor(DEFAULT_TORCH, backend="torch", device="cpu", threads=args.threads, tile_px=0)
    held = sup.config.training["held_out_cases"]
    pairs = load_pairs(DEFAULT_DATA, held[: args.limit] if args.limit else held)
    unet = sup.pipeline.denoiser.unet
    attention = unet.mid_block.attentions[0]
    print("| mid-block attention | BSR mean | BSR worst |")
    print("|---|---|---|")
    for name, module in (("whole image (as shipped)", attention),
                         (f"{args.tokens}x{args.tokens}-token windows", WindowedBlock(attention, args.tokens))):
        unet.mid_block.attentions[0] = module
        s = summary(evaluate_pairs(sup, pairs, "reference", seed=0))
        print(f"| {name} | {s['bsr']['mean']:.4f} | {s['bsr']['worst']:.4f} |", flush=True)
    print(f"\n{len(pairs)} held-out pairs; torch backend; every other layer sees the whole 512 image.")


if __name__ == "__main__":
    main()
