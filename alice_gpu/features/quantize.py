"""int8 embeddings (``features.precision: int8``): the fp32 ONNX model quantized once,
statically, calibrated on images this module generates (nothing is downloaded).

The recipe is fixed, so every machine makes the same file from the same fp32 one:
per-channel QDQ, unsigned 8-bit activations and signed 7-bit weights
(``reduce_range``: without VNNI, x86 int8 kernels add pairs of u8 x s8 products in
16 bits and full-range weights saturate them), the first convolution left in fp32
(it sees the normalised pixels, whose range is the widest), MinMax ranges from
:data:`CALIBRATION` generated images. Why this recipe and what it costs in quality
are in RESULTS.md and the README. int8 vectors are another embedding space than
fp32 ones (:func:`embedding_space`); an index records its space and never mixes two.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ModelError

log = logging.getLogger(__name__)

RECIPE = "q1"          # bump when the recipe or the calibration images change
CALIBRATION = 64       # generated images
SEED = 20261206


def embedding_space(precision: str) -> str:
    """The space a run's vectors live in: int8 is its own; fp32, bf16 and fp16 (any
    runtime) give the same neighbours and count as one."""
    return "int8" if precision == "int8" else "fp32"


def calibration_images(n: int = CALIBRATION, seed: int = SEED, size: int = 256
                       ) -> list[np.ndarray]:
    """``n`` uint8 RGB working images with the statistics the network's ranges depend on:
    colour noise with a natural image's 1/f spectrum, flat shapes with hard edges, and
    blur, from a fixed seed (the same images everywhere)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    freq[0, 0] = 1.0
    out = []
    for _ in range(n):
        amp = freq ** (-rng.uniform(0.9, 1.3) / 2)

        def noise() -> np.ndarray:
            return np.real(np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((size, size)))))

        base = noise()
        planes = []
        for _ in range(3):
            x = base + rng.uniform(0.1, 0.6) * noise()
            x = (x - x.mean()) / (x.std() + 1e-9)
            planes.append(x * rng.uniform(30, 70) + rng.uniform(60, 190))
        img = Image.fromarray(np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 12))):
            xs, ys = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1])], fill=colour)
        out.append(np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 2)))))
    return out


def int8_file(fp32: Path, preprocess: Callable[[Sequence[np.ndarray]], np.ndarray],
              announce: Callable[[str], None] | None = None) -> Path:
    """The cached int8 model made from the cached fp32 one (same key, so it is made again
    whenever that one is), quantized now if missing."""
    path = fp32.with_name(f"{fp32.stem}-int8{RECIPE}.onnx")
    if path.is_file():
        return path
    (announce or log.warning)(f"quantizing the model to int8, once (cached in {path.parent})")
    fd, tmp = tempfile.mkstemp(prefix=f".{fp32.stem.split('-')[0]}-{os.getpid()}-",
                               suffix=".onnx", dir=path.parent)
    os.close(fd)
    pre = tmp + ".pre.onnx"
    try:
        _quantize(str(fp32), pre, tmp, preprocess)
        os.replace(tmp, path)                              # atomic: whole file or none
    finally:
        for left in (tmp, pre):
            if os.path.exists(left):
                os.unlink(left)
    return path


def _quantize(src: str, pre: str, out: str,
              preprocess: Callable[[Sequence[np.ndarray]], np.ndarray]) -> None:
    try:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                              QuantFormat, QuantType, quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ModelError(f"int8 needs onnxruntime's quantization tools ({exc.name} is "
                         f"missing: pip install onnx)") from None

    images = calibration_images()
    batches = [preprocess(images[i:i + 8]) for i in range(0, len(images), 8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(batches)

        def get_next(self):
            batch = next(self.left, None)
            return None if batch is None else {"pixels": batch}

        def rewind(self) -> None:
            self.left = iter(batches)

    quant_pre_process(src, pre, skip_symbolic_shape=True)
    first = next(n.name for n in onnx.load(pre).graph.node if n.op_type == "Conv")
    quantize_static(model_input=pre, model_output=out, calibration_data_reader=Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=[first])
