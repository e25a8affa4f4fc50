"""JPEG decoding on the GPU (nvJPEG through torchvision), for ``--decode gpu``.

Not bit-identical to Pillow's DCT-scaled draft + Lanczos: the tests bound the
difference, and ``benchmarks/gpu_check.py`` reports how far hashes move.
"""

from __future__ import annotations

from typing import Sequence

import torch


def gpu_decode_jpegs(datas: Sequence[bytes], orientations: Sequence[int], size: int,
                     device: torch.device) -> tuple[torch.Tensor | None, list[int]]:
    """Decode JPEG bytes on the GPU (torchvision / nvJPEG) to a uint8 NCHW batch of size².

    EXIF orientation is applied with flips/transposes on the device; every image
    is then resized (antialiased bilinear) to ``size`` x ``size``. Returns the
    batch of the images nvJPEG accepted and the indices it rejected (for the CPU
    decoder to take over). Not bit-identical to Pillow: see README.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = []
        for t in tensors:   # one bad file must not sink its batch: retry one by one
            try:
                decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    out, rejected = [], []
    for i, (img, orient) in enumerate(zip(decoded, orientations)):
        if img is None:
            rejected.append(i)
            continue
        img = orient(img, orient)
        img = torch.nn.functional.interpolate(img[None].float(), size=(size, size),
                                              mode="bilinear", antialias=True,
                                              align_corners=False)
        out.append(img.round_().clamp_(0, 255).to(torch.uint8))
    return (torch.cat(out) if out else None), rejected


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """EXIF orientation 1..8 on a CHW tensor (same transforms as ImageOps.exif_transpose)."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1).flip(-2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return img.transpose(-1, -2).flip(-1)
    if orientation == 7:
        return img.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return img.transpose(-1, -2).flip(-2)
    return img
