"""The rib-segmentation network: a small 2-D U-Net (Ronneberger et al. 2015) in PyTorch.

Only training and ONNX export import this module; inference runs the exported graph in
ONNX Runtime (``ribnode.models.segmentation.runtime``) and never imports torch.

Design: ``depth`` resolution levels with ``base * 2**level`` channels, two 3x3 convolutions
with BatchNorm and ReLU per level (BatchNorm folds into the convolutions at export, so it
costs nothing at inference), max-pool down, bilinear upsampling plus a 1x1 convolution up
(no transposed convolutions: they leave checkerboard artefacts on thin structures such as
ribs). The network returns logits; the sigmoid is applied by the loss and at inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyper-parameters, saved in the weights' JSON config."""

    in_channels: int = 1
    out_channels: int = 1
    base: int = 16
    depth: int = 5  # resolution levels, including the bottleneck
    batchnorm: bool = True  # False: BatchNorm folded into biased convolutions (exported form)
    groups: int = 0  # > 0: GroupNorm with this many groups instead of BatchNorm (same in training and inference)
    bone_head: bool = False  # training only: a second 1x1 head estimating the bone layer

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.depth - 1)


class DoubleConv(nn.Sequential):
    """(3x3 conv, norm, ReLU) twice; without a norm the convolutions carry a bias."""

    def __init__(self, in_channels: int, out_channels: int, batchnorm: bool = True, groups: int = 0) -> None:
        def norm() -> nn.Module:
            if groups:
                return nn.GroupNorm(groups, out_channels)
            return nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity()

        bias = not (batchnorm or groups)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            norm(),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            norm(),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Bilinear x2 upsampling, 1x1 channel reduction, concatenation with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, batchnorm: bool = True, groups: int = 0) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, out_channels, 1)
        self.conv = DoubleConv(2 * out_channels, out_channels, batchnorm, groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, self.reduce(x)], dim=1))


class UNet(nn.Module):
    """U-Net returning one logit map the size of the input."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        if self.config.depth < 2:
            raise ValueError(f"UNet depth must be >= 2, got {self.config.depth}")
        widths = [self.config.base * 2**level for level in range(self.config.depth)]
        bn, groups = self.config.batchnorm, self.config.groups
        self.down = nn.ModuleList([DoubleConv(self.config.in_channels, widths[0], bn, groups)])
        self.down.extend(DoubleConv(a, b, bn, groups) for a, b in zip(widths[:-1], widths[1:]))
        self.up = nn.ModuleList(Up(b, a, bn, groups) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Conv2d(widths[0], self.config.out_channels, 1)
        self.bone = nn.Conv2d(widths[0], 1, 1) if self.config.bone_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_with_bone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rib logits and the auxiliary bone-layer estimate (``bone_head`` networks only)."""
        if self.bone is None:
            raise ValueError("this U-Net has no bone head (UNetConfig.bone_head is False)")
        features = self.features(x)
        return self.head(features), self.bone(features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder level's feature map, input-sized, that the 1x1 heads read."""
        skips: list[torch.Tensor] = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in reversed(self.up):
            x = block(x, skips.pop())
        return x


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def fold_batchnorm(model: UNet) -> UNet:
    """An eval-mode copy of ``model`` with every BatchNorm folded into its convolution.

    Same function (up to float rounding), fewer layers; an auxiliary bone head is dropped (it
    only serves training). It is the form exported to ONNX, so
    the ONNX initializers carry exactly this module's parameter names and a torch model can be
    rebuilt from the shipped ONNX file (parity tests on the shipped weights).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = model.eval()
    if (model.config.groups or not model.config.batchnorm) and not model.config.bone_head:
        return model  # GroupNorm has no running statistics to fold
    folded = UNet(replace(model.config, batchnorm=False, bone_head=False)).eval()
    folded.load_state_dict(model.state_dict(), strict=False)
    if not model.config.batchnorm:
        return folded
    pairs = zip(
        (m for m in model.modules() if isinstance(m, DoubleConv)),
        (m for m in folded.modules() if isinstance(m, DoubleConv)),
    )
    for source, target in pairs:
        for index in (0, 3):
            conv, norm, out = source[index], source[index + 1], target[index]
            assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
            assert isinstance(out, nn.Conv2d) and out.bias is not None
            fused = fuse_conv_bn_eval(conv, norm)
            assert fused.bias is not None
            out.weight.copy_(fused.weight)
            out.bias.copy_(fused.bias)
    return folded
