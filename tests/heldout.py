"""Held-out duplicate sets: transformed copies of shared photos among distractors.

Generated at test time (never stored in the repository) from ``photo_collection``:
each chosen original gets one copy under one transform, with parameters drawn
from ``seed``; every other photo of the half is an untouched distractor. The two
halves of the collection never share a photo, so thresholds tuned on one
(``benchmarks/tune_tiers.py``, half 0) are judged on the other (the tests, half 1).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# name → what a user did to the copy (parameters drawn per copy)
TRANSFORMS = ("crop", "downscale", "jpeg20", "rotate5", "grayscale", "banner", "squash",
              "rotate90", "mirror")


def _crop(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Up to 12% of the area cut away, unevenly from the sides."""
    w, h = im.size
    keep = np.sqrt(1.0 - rng.uniform(0.04, 0.12))
    cw, ch = int(w * keep), int(h * keep)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((x, y, x + cw, y + ch))


def _rotate_small(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Straightened by 1-5°, then cropped to the largest box with no empty corners."""
    deg = float(rng.uniform(1.0, 5.0) * rng.choice([-1, 1]))
    w, h = im.size
    out = im.rotate(deg, resample=Image.Resampling.BICUBIC, expand=False)
    a = np.radians(abs(deg))
    # the largest axis-aligned rectangle of the same aspect inside the rotated frame
    scale = 1.0 / (np.cos(a) + np.sin(a) * max(w / h, h / w))
    cw, ch = int(w * scale), int(h * scale)
    x, y = (w - cw) // 2, (h - ch) // 2
    return out.crop((x, y, x + cw, y + ch))


def _banner(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A caption strip over the bottom 10-15%, as meme and watermark tools add."""
    out = im.copy()
    w, h = out.size
    bh = int(h * rng.uniform(0.10, 0.15))
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, h - bh, w, h), fill=(0, 0, 0))
    font = ImageFont.load_default(size=max(10, int(bh * 0.6)))
    draw.text((int(w * 0.05), h - bh + bh // 6), "#throwback @alice 2026", fill=(255, 255, 255),
              font=font)
    return out


def _squash(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Stretched to another aspect ratio (one side scaled by 0.6-0.8)."""
    w, h = im.size
    f = float(rng.uniform(0.6, 0.8))
    return im.resize((int(w * f), h) if rng.random() < 0.5 else (w, int(h * f)),
                     Image.Resampling.BICUBIC)


def make_copy(src: Path, dst: Path, transform: str, rng: np.random.Generator) -> Path:
    """Write ``transform`` of the photo at ``src`` as a JPEG (quality 90 unless stated)."""
    im = Image.open(src).convert("RGB")
    quality = 90
    if transform == "crop":
        im = _crop(im, rng)
    elif transform == "downscale":
        im = im.resize((max(1, im.width // 3), max(1, im.height // 3)), Image.Resampling.LANCZOS)
    elif transform == "jpeg20":
        quality = 20
    elif transform == "rotate5":
        im = _rotate_small(im, rng)
    elif transform == "grayscale":
        im = im.convert("L")
    elif transform == "banner":
        im = _banner(im, rng)
    elif transform == "squash":
        im = _squash(im, rng)
    elif transform == "rotate90":
        im = im.transpose([Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_90,
                           Image.Transpose.ROTATE_180][int(rng.integers(0, 3))])
    elif transform == "mirror":
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    else:
        raise ValueError(f"unknown transform {transform!r}")
    dst = dst.with_suffix(".jpg")
    im.save(dst, "JPEG", quality=quality)
    return dst


def build(photos: Path, out: Path, *, half: int, per_transform: int, seed: int,
          distractors: int | None = None) -> Path:
    """A held-out set under ``out``: originals, their copies and distractors, with
    ``groups.csv`` (file,group,transform; a file's path relative to ``out``).

    ``half`` 0 or 1 picks which half of photo_collection the set is drawn from.
    Returns the path of groups.csv.
    """
    rows = list(csv.DictReader(open(photos / "labels.csv")))
    pool = rows[half::2]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    n_orig = per_transform * len(TRANSFORMS)
    originals = [pool[i] for i in order[:n_orig]]
    rest = [pool[i] for i in order[n_orig:]]
    if distractors is not None:
        rest = rest[:distractors]
    (out / "originals").mkdir(parents=True, exist_ok=True)
    (out / "copies").mkdir(exist_ok=True)
    (out / "others").mkdir(exist_ok=True)
    lines = [("file", "group", "transform")]
    for k, row in enumerate(originals):
        transform = TRANSFORMS[k % len(TRANSFORMS)]
        src = photos / row["file"]
        stem = Path(row["file"]).stem
        orig = out / "originals" / Path(row["file"]).name
        shutil.copyfile(src, orig)
        copy = make_copy(src, out / "copies" / f"{stem}_{transform}", transform, rng)
        lines += [(str(orig.relative_to(out)), f"g{k}", ""),
                  (str(copy.relative_to(out)), f"g{k}", transform)]
    for row in rest:
        dst = out / "others" / Path(row["file"]).name
        shutil.copyfile(photos / row["file"], dst)
        lines.append((str(dst.relative_to(out)), f"d{Path(row['file']).stem}", ""))
    truth = out / "groups.csv"
    with open(truth, "w", newline="") as fh:
        csv.writer(fh).writerows(lines)
    return truth
