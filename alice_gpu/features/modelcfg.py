"""Model metadata without torch: what the store and the pipeline need to know of a model.

Kept apart from :mod:`.models` (which builds the networks) so that
opening an index, or a hash-only run, never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainedCfg:
    """What a model needs from the pipeline, and what it gives back."""

    name: str
    input_size: int
    mean: tuple[float, float, float]   # on the 0..1 scale
    std: tuple[float, float, float]
    crop_pct: float                    # centre crop of the working image before resizing
    dim: int
    num_classes: int
    padding: str = "same"              # "same" (TensorFlow) or "symmetric" (PyTorch)


EFFICIENTNET_LITE0 = PretrainedCfg(
    name="efficientnet_lite0", input_size=224,
    mean=(127.0 / 255,) * 3, std=(128.0 / 255,) * 3,
    crop_pct=0.875, dim=1280, num_classes=1000, padding="same",
)

BUILTIN = {cfg.name: cfg for cfg in (EFFICIENTNET_LITE0,)}


def known_dim(name: str) -> int | None:
    """Embedding size of a built-in model, or None for a plug-in (ask the registry)."""
    cfg = BUILTIN.get(name)
    return cfg.dim if cfg else None
