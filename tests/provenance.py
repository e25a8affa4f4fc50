"""Held-out sets by provenance: copies of one capture, and other captures of one scene.

Generated at run time from ``photo_collection`` (nothing stored in the repository).
Copies are what people do to a picture: crops of 5-30% per side, off-centre crops,
crop then scale then recompress, crop then mirror or turn, a caption banner, a
watermark, levels, saturation, a local blur. Look-alikes are other captures: two
frames half a second apart of a generated clip in which the camera pans and zooms
slowly while two objects cross the scene at their own speeds. Half 0 of the photos
tunes, half 1 tests (the halves share no photo).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from heldout import _banner   # the caption strip of the first held-out set

COPIES = ("crop5", "crop15", "crop30", "offcentre", "crop_scale_jpeg", "crop_mirror",
          "crop_turn", "banner", "watermark", "levels", "saturation", "local_blur")


def _crop_sides(im: Image.Image, rng: np.random.Generator, lo: float, hi: float
                ) -> Image.Image:
    """Each side cut by its own fraction in [lo, hi)."""
    w, h = im.size
    left, right, top, bottom = (rng.uniform(lo, hi) for _ in range(4))
    return im.crop((int(w * left), int(h * top), int(w * (1 - right)), int(h * (1 - bottom))))


def _offcentre(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """60-80% of each side, pushed towards a corner."""
    w, h = im.size
    kw, kh = rng.uniform(0.6, 0.8, 2)
    cw, ch = int(w * kw), int(h * kh)
    x = int((w - cw) * rng.choice([rng.uniform(0, 0.2), rng.uniform(0.8, 1.0)]))
    y = int((h - ch) * rng.choice([rng.uniform(0, 0.2), rng.uniform(0.8, 1.0)]))
    return im.crop((x, y, x + cw, y + ch))


def _watermark(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A half-transparent name and logo over the middle of the picture."""
    base = im.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = base.size
    size = max(12, int(min(w, h) * rng.uniform(0.08, 0.14)))
    font = ImageFont.load_default(size=size)
    x, y = int(w * rng.uniform(0.1, 0.3)), int(h * rng.uniform(0.3, 0.6))
    alpha = int(rng.uniform(90, 150))
    draw.ellipse((x - size, y, x, y + size), fill=(255, 255, 255, alpha))
    draw.text((x + size // 3, y), "© studio alice", fill=(255, 255, 255, alpha), font=font)
    return Image.alpha_composite(base, layer).convert("RGB")


def _levels(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and gamma, as a levels or curves tool changes them."""
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.75, 1.3))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.7, 1.4))
    gamma = rng.uniform(0.7, 1.4)
    lut = [min(255, int(255 * (i / 255) ** gamma + 0.5)) for i in range(256)] * 3
    return im.point(lut)


def _local_blur(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A blurred ellipse over a fifth to a third of the picture (a face or plate hidden)."""
    w, h = im.size
    rw, rh = w * rng.uniform(0.2, 0.3), h * rng.uniform(0.2, 0.3)
    cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
    mask = Image.new("L", im.size, 0)
    ImageDraw.Draw(mask).ellipse((cx - rw, cy - rh, cx + rw, cy + rh), fill=255)
    return Image.composite(im.filter(ImageFilter.GaussianBlur(rng.uniform(5, 10))), im, mask)


_TURNS = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270)


def make_copy(src: Path, dst: Path, transform: str, rng: np.random.Generator) -> Path:
    """Write ``transform`` of the photo at ``src`` as a JPEG (quality 90 unless stated)."""
    im = Image.open(src).convert("RGB")
    quality = 90
    if transform == "crop5":
        im = _crop_sides(im, rng, 0.05, 0.10)
    elif transform == "crop15":
        im = _crop_sides(im, rng, 0.10, 0.20)
    elif transform == "crop30":
        im = _crop_sides(im, rng, 0.20, 0.30)
    elif transform == "offcentre":
        im = _offcentre(im, rng)
    elif transform == "crop_scale_jpeg":
        im = _crop_sides(im, rng, 0.05, 0.15)
        im = im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.LANCZOS)
        quality = int(rng.integers(30, 51))
    elif transform == "crop_mirror":
        im = _crop_sides(im, rng, 0.05, 0.15).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif transform == "crop_turn":
        im = _crop_sides(im, rng, 0.05, 0.15).transpose(_TURNS[int(rng.integers(0, 2))])
    elif transform == "banner":
        im = _banner(im, rng)
    elif transform == "watermark":
        im = _watermark(im, rng)
    elif transform == "levels":
        im = _levels(im, rng)
    elif transform == "saturation":
        im = ImageEnhance.Color(im).enhance(rng.choice([rng.uniform(0.2, 0.6),
                                                        rng.uniform(1.5, 2.0)]))
    elif transform == "local_blur":
        im = _local_blur(im, rng)
    else:
        raise ValueError(f"unknown transform {transform!r}")
    dst = dst.with_suffix(".jpg")
    im.save(dst, "JPEG", quality=quality)
    return dst


def clip_frames(background: Path, movers: list[Path], rng: np.random.Generator,
                size: tuple[int, int] = (480, 360)) -> list[Image.Image]:
    """Two frames 0.5 s apart of a generated clip: the camera pans (2-5% of the frame)
    and zooms (2-6%) across ``background`` while each mover, cut from another photo,
    crosses the scene at its own speed (10-25% of the frame), and the exposure drifts."""
    bg = Image.open(background).convert("RGB")
    scale = max(size[0] * 1.3 / bg.width, size[1] * 1.3 / bg.height)
    bg = bg.resize((int(bg.width * scale) + 1, int(bg.height * scale) + 1),
                   Image.Resampling.BICUBIC)
    things = []
    for path in movers:
        m = Image.open(path).convert("RGB")
        side = int(min(size) * rng.uniform(0.25, 0.4))
        m = m.resize((side, int(side * m.height / m.width)), Image.Resampling.BICUBIC)
        mask = Image.new("L", m.size, 0)
        ImageDraw.Draw(mask).ellipse((0, 0, m.width - 1, m.height - 1), fill=255)
        start = rng.uniform([0.1, 0.1], [0.6, 0.6]) * np.asarray(size)
        speed = rng.uniform(0.10, 0.25) * min(size) * np.array([np.cos(a := rng.uniform(0, 6.28)),
                                                                np.sin(a)])
        things.append((m, mask, start, speed))
    pan = rng.uniform(0.02, 0.05) * size[0] * rng.choice([-1, 1])
    zoom = rng.uniform(0.02, 0.06)
    frames = []
    for k in range(2):
        z = 1.0 + zoom * k
        cw, ch = size[0] / z, size[1] / z
        x0 = (bg.width - cw) / 2 + pan * k
        y0 = (bg.height - ch) / 2
        frame = bg.crop((int(x0), int(y0), int(x0 + cw), int(y0 + ch))).resize(
            size, Image.Resampling.BICUBIC)
        for m, mask, start, speed in things:
            x, y = (start + speed * k).astype(int)
            frame.paste(m, (int(x), int(y)), mask)
        frames.append(ImageEnhance.Brightness(frame).enhance(1.0 + rng.uniform(-0.04, 0.04)))
    return frames


def build(photos: Path, out: Path, *, half: int, per_transform: int, clips: int, seed: int,
          distractors: int = 40, other_half: bool = False) -> Path:
    """A held-out set under ``out``: copies (``per_transform`` of each of :data:`COPIES`),
    ``clips`` pairs of clip frames, and distractors, all from one half of the photos
    (distractors and the clips' sources are different photos), with ``groups.csv``
    (file,group,transform,relation; paths relative to ``out``). ``other_half``: every
    photo of the other half is a distractor too."""
    rows = list(csv.DictReader(open(photos / "labels.csv")))
    pool = [photos / r["file"] for r in rows[half::2]]
    rng = np.random.default_rng(seed)
    order = [pool[i] for i in rng.permutation(len(pool))]
    need = per_transform * len(COPIES)
    originals, others = order[:need], order[need:need + distractors]
    sources = order[need + distractors:]
    if len(sources) < 3 or len(others) < distractors:
        raise ValueError("not enough photos in this half for the set asked for")
    for sub in ("originals", "copies", "clips", "others"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    lines = [("file", "group", "transform", "relation")]
    for k, src in enumerate(originals):
        transform = COPIES[k % len(COPIES)]
        orig = out / "originals" / src.name
        orig.write_bytes(src.read_bytes())
        copy = make_copy(src, out / "copies" / f"{src.stem}_{transform}", transform, rng)
        lines += [(str(orig.relative_to(out)), f"g{k}", "", "copy"),
                  (str(copy.relative_to(out)), f"g{k}", transform, "copy")]
    for c in range(clips):
        n = len(sources)
        bg, movers = sources[c % n], [sources[(c + 7) % n], sources[(c + 13) % n]]
        for k, frame in enumerate(clip_frames(bg, movers, rng)):
            path = out / "clips" / f"clip{c:03d}_{k}.jpg"
            frame.save(path, "JPEG", quality=int(rng.integers(80, 95)))
            lines.append((str(path.relative_to(out)), f"clip{c}", "clip frames", "lookalike"))
    if other_half:
        others = others + [photos / r["file"] for r in rows[1 - half::2]]
    for src in others:
        dst = out / "others" / src.name
        dst.write_bytes(src.read_bytes())
        lines.append((str(dst.relative_to(out)), f"d{src.stem}", "", "copy"))
    truth = out / "groups.csv"
    with open(truth, "w", newline="") as fh:
        csv.writer(fh).writerows(lines)
    return truth
