"""The denoiser of the rib suppression: a small diffusers ``UNet2DModel``.

Input channels: (noisy bone layer, radiograph, dilated rib mask), all at the working size;
output: one channel, the clean bone layer (``prediction_type`` "sample") in the model's scaled
units (see ``SuppressionConfig.bone_scale``). The configuration is saved beside the weights
(``rib-suppression.json``) so that a checkpoint is never read with the wrong network.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

IN_CHANNELS = 3  # noisy bone, radiograph, rib mask
OUT_CHANNELS = 1


@dataclass(frozen=True)
class NetworkConfig:
    """Size of the ``UNet2DModel`` (the keyword arguments that differ from diffusers' defaults)."""

    sample_size: int = 256
    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 8

    def __post_init__(self) -> None:
        if self.sample_size % (2 ** (len(self.block_out_channels) - 1)):
            raise ValueError(
                f"sample_size {self.sample_size} must be divisible by "
                f"{2 ** (len(self.block_out_channels) - 1)} for {len(self.block_out_channels)} levels"
            )
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ValueError(
                    f"block_out_channels {self.block_out_channels}: each must be divisible by "
                    f"norm_num_groups {self.norm_num_groups}"
                )

    @property
    def multiple(self) -> int:
        """Input sides must be a multiple of this (one halving per level but the last)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``diffusers.UNet2DModel`` for this configuration."""
        levels = len(self.block_out_channels)
        return {
            "sample_size": self.sample_size,
            "in_channels": IN_CHANNELS,
            "out_channels": OUT_CHANNELS,
            "block_out_channels": tuple(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "down_block_types": ("DownBlock2D",) * levels,
            "up_block_types": ("UpBlock2D",) * levels,
            "norm_num_groups": self.norm_num_groups,
        }


@dataclass(frozen=True)
class SchedulerConfig:
    """The diffusion schedule (diffusers ``DDIMScheduler`` keyword arguments).

    ``prediction_type`` "sample": the net predicts the clean bone layer, the quantity we
    subtract; "trailing" spacing starts few-step sampling at the last timestep (pure noise).
    ``set_alpha_to_one`` makes the last DDIM step return the x0 prediction itself.
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"
    timestep_spacing: str = "trailing"
    clip_sample: bool = False
    set_alpha_to_one: bool = True

    def __post_init__(self) -> None:
        if self.prediction_type not in ("sample", "epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r}: expected sample, epsilon or v_prediction")
        if self.timestep_spacing not in ("trailing", "leading", "linspace"):
            raise ValueError(f"timestep_spacing {self.timestep_spacing!r}: expected trailing, leading or linspace")


@dataclass(frozen=True)
class SuppressionConfig:
    """Everything needed to use the weights: network, schedule, normalisation, training record.

    Normalisation (linear, per image, at the working size): ``n = (x - lo) / (hi - lo)`` with
    ``lo``/``hi`` the ``percentiles`` of the working image; the network's bone output ``b`` maps
    back to bone-bright [0, 1] units of the source by ``B = b / bone_scale * (hi - lo)``.
    ``mode`` "diffusion" samples with the scheduler; "regression" is the one-step baseline
    (noisy-bone channel zero, timestep 0).
    """

    network: NetworkConfig = field(default_factory=NetworkConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    mode: str = "diffusion"
    percentiles: tuple[float, float] = (1.0, 99.0)
    bone_scale: float = 10.0
    mask_dilation_px_512: float = 5.0
    default_steps: int = 4
    #: > 0: keep only the rib-shaped part of the bone layer (``shape.rib_shaped``), line length
    #: in px at 512 (longer than the largest nodule diameter the lesion test uses, 24 px)
    rib_shape_line_px_512: int = 0
    #: > 0: replace the bone layer by its median along the ribs (``shape.rib_median``), line
    #: length in px at 512: a nodule narrower than half the line is not read as bone
    rib_median_line_px_512: int = 0
    #: > 0: weight the bone layer by ``shape.edge_taper`` of the rib mask: 1 on the mask, 0 at
    #: this distance from it (px at 512; the region's dilation, so the layer fades out over it)
    edge_taper_px_512: float = 0.0
    #: > 0: run the denoiser on square windows of this side (px at the working size), the size
    #: of the training crops, and blend them (``pipeline.TiledDenoiser``); 0: the whole image
    tile_px: int = 0
    #: step between windows (px at the working size); 0: half a window
    tile_stride_px: int = 0
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("diffusion", "regression"):
            raise ValueError(f"mode {self.mode!r}: expected 'diffusion' or 'regression'")
        check_tiling(self.tile_px, self.tile_stride_px, self.network.multiple)

    @property
    def working_size(self) -> int:
        return self.network.sample_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SuppressionConfig":
        """Rebuild from ``to_dict`` output (JSON lists become tuples); unknown keys are kept out."""
        net = dict(data.get("network", {}))
        if "block_out_channels" in net:
            net["block_out_channels"] = tuple(net["block_out_channels"])
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["network"] = NetworkConfig(**net)
        known["scheduler"] = SchedulerConfig(**data.get("scheduler", {}))
        if "percentiles" in known:
            known["percentiles"] = tuple(known["percentiles"])
        return cls(**known)

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """Write the config (and ``extra`` records such as sha256, split, metrics) as JSON."""
        payload = self.to_dict()
        payload.update(extra or {})
        Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> "SuppressionConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def check_tiling(tile_px: int, stride_px: int, multiple: int) -> None:
    """Raise ``ValueError`` unless ``tile_px`` is 0 or a positive multiple of ``multiple`` and
    ``stride_px`` is 0 or in ``1..tile_px``."""
    if tile_px < 0 or tile_px % multiple:
        raise ValueError(f"tile {tile_px} px: expected 0 (whole image) or a multiple of {multiple}")
    if stride_px < 0 or (tile_px and stride_px > tile_px):
        raise ValueError(f"tile stride {stride_px} px: expected 0 (half a tile) or 1..{tile_px}")


def build_unet(config: NetworkConfig) -> Any:
    """A freshly initialised denoiser for ``config`` (imports diffusers)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**config.unet_kwargs())


def build_scheduler(config: SchedulerConfig) -> Any:
    """The diffusers ``DDIMScheduler`` for ``config``."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**asdict(config))
