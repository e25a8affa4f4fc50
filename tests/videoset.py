"""A held-out style video set, generated with PyAV from real photos (tests and benchmarks).

Sources are pans and zooms across photos of ``photo_collection`` with cuts between
them (some open with 3 s of black, some with a shared title card); each source gets
the ten copies the issue names, and distractors are clips of the same duration made
from other photos and clips that share only the intro. Everything is seeded: the
same arguments make the same files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FPS = 25
W, H = 640, 480
GOP = 12                         # a keyframe every ~0.5 s, as phones write them
TRANSFORMS = ("lowbitrate", "360p", "container", "30fps", "rotate-matrix", "rotate-pixels",
              "mirror", "cut-start", "cut-end", "excerpt")


@dataclass
class Clip:
    name: str
    family: str                  # the source it comes from ("" for a distractor's own)
    transform: str               # "source", a TRANSFORMS name, or "distractor-*"
    duration: float
    start: float = 0.0           # where in the source it starts (seconds)


@dataclass
class VideoSet:
    folder: Path
    clips: list[Clip] = field(default_factory=list)

    def positives(self, fit: float = 0.7) -> set[frozenset[str]]:
        """Pairs of one family that show mostly the same footage: a source and each of
        its copies, and two copies whose spans of the source overlap by ``fit`` of the
        shorter (a copy without its first 3 s and one without its last 5 s of a 12 s
        source share 4 s: not a pair)."""
        fam: dict[str, list[Clip]] = {}
        for c in self.clips:
            if c.family:
                fam.setdefault(c.family, []).append(c)
        out = set()
        for clips in fam.values():
            for x in clips:
                for y in clips:
                    shared = min(x.start + x.duration, y.start + y.duration) - max(x.start, y.start)
                    if x.name < y.name and shared >= fit * min(x.duration, y.duration) - 0.05:
                        out.add(frozenset((x.name, y.name)))
        return out


def _title_card() -> np.ndarray:
    im = Image.new("RGB", (W, H), (20, 30, 90))
    d = ImageDraw.Draw(im)
    d.rectangle((60, 160, W - 60, H - 160), outline=(240, 200, 40), width=8)
    for k in range(6):
        d.text((100 + 80 * k, 220), "ALICE"[k % 5], fill=(255, 255, 255))
    d.ellipse((W // 2 - 40, 300, W // 2 + 40, 380), fill=(200, 60, 60))
    return np.asarray(im)


def _photo(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((int(W * 1.5), int(H * 1.5)),
                                                   Image.Resampling.BILINEAR))


def _shot(photo: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` frames panning (or zooming) slowly across ``photo``."""
    ph, pw = photo.shape[:2]
    zoom = rng.random() < 0.4
    x0, y0 = rng.integers(0, pw - W), rng.integers(0, ph - H)
    x1, y1 = rng.integers(0, pw - W), rng.integers(0, ph - H)
    out = []
    for k in range(n):
        f = k / max(1, n - 1)
        if zoom:          # from the whole photo to a 2/3 crop around its centre
            s = 1.0 - f / 3.0
            cw, ch = int(pw * s), int(ph * s)
            cx, cy = (pw - cw) // 2, (ph - ch) // 2
            crop = Image.fromarray(photo[cy:cy + ch, cx:cx + cw])
            out.append(np.asarray(crop.resize((W, H), Image.Resampling.BILINEAR)))
        else:             # a pan covering at most a third of the frame a shot
            x = int(x0 + (x1 - x0) * f * 0.3)
            y = int(y0 + (y1 - y0) * f * 0.3)
            out.append(np.ascontiguousarray(photo[y:y + H, x:x + W]))
    return out


def source_frames(photos: list[Path], seconds: float, rng: np.random.Generator,
                  intro: str = "") -> list[np.ndarray]:
    """A clip of shots of ``photos`` (cuts between), with a 3 s black or title intro."""
    frames: list[np.ndarray] = []
    if intro == "black":
        frames += [np.zeros((H, W, 3), np.uint8)] * (3 * FPS)
    elif intro == "title":
        frames += [_title_card()] * (3 * FPS)
    total = int(seconds * FPS)
    k = 0
    while len(frames) < total:
        n = min(total - len(frames), int(rng.integers(4 * FPS, 6 * FPS)))
        frames += _shot(_photo(photos[k % len(photos)]), n, rng)
        k += 1
    return frames


def write(path: Path, frames, fps: float = FPS, codec: str = "libx264",
          bitrate: int | None = None, rotation: int | None = None) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=int(fps) if float(fps).is_integer() else fps)
        h, w = frames[0].shape[:2]
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = GOP
        if codec == "libx264":
            s.options = {"preset": "ultrafast", **({} if bitrate else {"crf": "20"})}
        if bitrate:
            s.bit_rate = bitrate
        if rotation is not None:
            s.set_display_rotation(rotation)
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f),
                                                         format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def read(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def copy(frames: list[np.ndarray], transform: str, folder: Path, name: str) -> tuple[str, float, float]:
    """One transformed copy of a source's frames; (file name, duration, start)."""
    n = len(frames)
    if transform == "lowbitrate":
        write(folder / f"{name}.mp4", frames, bitrate=250_000)
        return f"{name}.mp4", n / FPS, 0.0
    if transform == "360p":
        small = [np.asarray(Image.fromarray(f).resize((480, 360), Image.Resampling.BILINEAR))
                 for f in frames]
        write(folder / f"{name}.mp4", small)
        return f"{name}.mp4", n / FPS, 0.0
    if transform == "container":
        write(folder / f"{name}.avi", frames, codec="mpeg4", bitrate=1_500_000)
        return f"{name}.avi", n / FPS, 0.0
    if transform == "30fps":
        m = int(n * 30 / FPS)
        write(folder / f"{name}.mp4", [frames[min(n - 1, int(k * FPS / 30))] for k in range(m)],
              fps=30)
        return f"{name}.mp4", n / FPS, 0.0
    if transform == "rotate-matrix":
        write(folder / f"{name}.mov", frames, rotation=90)
        return f"{name}.mov", n / FPS, 0.0
    if transform == "rotate-pixels":
        write(folder / f"{name}.mp4", [np.ascontiguousarray(np.rot90(f, -1)) for f in frames])
        return f"{name}.mp4", n / FPS, 0.0
    if transform == "mirror":
        write(folder / f"{name}.mp4", [np.ascontiguousarray(f[:, ::-1]) for f in frames])
        return f"{name}.mp4", n / FPS, 0.0
    if transform == "cut-start":
        write(folder / f"{name}.mp4", frames[3 * FPS:])
        return f"{name}.mp4", n / FPS - 3, 3.0
    if transform == "cut-end":
        write(folder / f"{name}.mp4", frames[:n - 5 * FPS])
        return f"{name}.mp4", n / FPS - 5, 0.0
    if transform == "excerpt":
        start = (n - 10 * FPS) // 2
        write(folder / f"{name}.mp4", frames[start:start + 10 * FPS])
        return f"{name}.mp4", 10.0, start / FPS
    raise ValueError(transform)


def make_set(folder: Path, photos: list[Path], sources: int = 20, seed: int = 0,
             durations: tuple[int, int] = (12, 40), transforms=TRANSFORMS) -> VideoSet:
    """``sources`` source clips with their copies, and as many distractors; the photos
    of each clip are drawn from ``photos`` without sharing between clips (up to 23
    sources from the 465 photos; more share photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    per = 10                     # photos a clip, none shown twice (a still has one moment)
    vs = VideoSet(folder)
    for s in range(sources):
        pick = [order[(k + j) % len(order)] for k in (2 * s * per,) for j in range(2 * per)]
        use, other = [photos[i] for i in pick[:per]], [photos[i] for i in pick[per:]]
        secs = float(rng.integers(durations[0], durations[1] + 1))
        intro = ("black", "title", "")[s % 3]
        frames = source_frames(use, secs, rng, intro)
        name = f"s{s:02d}"
        write(folder / f"{name}.mp4", frames)
        vs.clips.append(Clip(f"{name}.mp4", name, "source", secs))
        for t in transforms:
            fname, dur, start = copy(frames, t, folder, f"{name}-{t}")
            vs.clips.append(Clip(fname, name, t, dur, start))
        del frames
        # a distractor: the same duration and intro, other photos
        dname = f"d{s:02d}-{'same-intro' if intro else 'same-length'}.mp4"
        write(folder / dname, source_frames(other, secs, rng, intro))
        vs.clips.append(Clip(dname, "", "distractor-" + (intro or "length"), secs))
    return vs


def photo_list(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))


if __name__ == "__main__":      # python tests/videoset.py OUT [SOURCES]
    import sys

    out = Path(sys.argv[1])
    here = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    got = make_set(out, photo_list(here / "photo_collection" / "images"),
                   int(sys.argv[2]) if len(sys.argv) > 2 else 20)
    print(len(got.clips), "clips in", out, os.path.getsize(out) if out.is_file() else "")
