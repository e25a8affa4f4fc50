"""Decode-stage helper: a video file into a few frames, and the facts its container states.

A video is never decoded whole: the sampler seeks to chosen times (every second of
the first 30 s, and fixed fractions of the duration) and decodes the keyframe at or
before each (``skip_frame = "NONKEY"``). Where keyframes are sparse (a screen
recording, a re-encode with a 10 s GOP) it decodes forward from that keyframe
within a small frame budget, so a sample stays near its time. Frames are scaled by
swscale while still in the decoder's format, then turned upright by the display
matrix, so memory stays near one decoded frame whatever the resolution. Black,
uniform and fade frames carry no identity and are dropped; what remains are the
video's frames, each with its time in seconds.

PyAV (``pip install alice-gpu[video]``) is imported here only, on the first video.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import numpy as np
from PIL import Image

from .pillow import finish

log = logging.getLogger(__name__)

FIRST_SECONDS = 30.0      # every second of the start is sampled (intros, short clips)
FRACTIONS = 16            # and the middle of each 16th of the whole
KEY_TOLERANCE = 1.0       # seconds a keyframe may sit before its sample time (a phone: 1 s GOP)
FORWARD_SECONDS = 2.0     # decode past a sparse keyframe at most this long a sample
FORWARD_FRAMES = 60       # ... and at most this many frames
MAX_FRAMES = 48           # frames kept a video
SAMPLE_SIDE = 256         # frames are scaled to this long side in the decoder
_CHUNK = 1 << 20

# what the container is called in records (``format``), by demuxer name
_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2": "MP4", "matroska,webm": "MKV", "avi": "AVI",
            "mpegts": "MPEG-TS", "mpeg": "MPEG-PS", "flv": "FLV", "asf": "ASF",
            "ogg": "OGG", "nut": "NUT"}


@lru_cache(maxsize=1)
def available() -> bool:
    """True when PyAV is installed (the ``[video]`` extra)."""
    return importlib.util.find_spec("av") is not None


@dataclass
class Sampled:
    """What a video decodes to: upright working images, their times, and its facts."""

    frames: np.ndarray            # (F, S, S, 3) uint8, F >= 1
    times: np.ndarray             # (F,) float64 seconds from the start
    poster: int                   # index of the frame shown for the video
    facts: dict                   # duration, fps, codec, rotation, audio, taken_at...
    width: int                    # displayed (after rotation)
    height: int
    format: str


class VideoError(Exception):
    """A video that cannot be read; the message is the failure's reason."""


def file_sha256(path: str) -> tuple[str, int, int]:
    """SHA-256 of a (large) file streamed in 1 MiB reads, with the size and mtime of the
    bytes read: a video is never held in memory whole."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        st = os.fstat(fh.fileno())
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        read = 0
        while n := fh.readinto(buf):
            digest.update(view[:n])
            read += n
    if read != st.st_size:
        raise OSError("the file changed while it was being read; it is read again "
                      "on the next run")
    return digest.hexdigest(), st.st_size, st.st_mtime_ns


def decode_video(path: str, working_size: int, mode: str = "RGB") -> Sampled:
    """Sample ``path``'s frames as ``working_size`` square images; raises VideoError."""
    import av

    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise VideoError(_unopened(path, exc)) from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            has = f" (it holds {', '.join(kinds)} only)" if kinds else ""
            raise VideoError(f"no video stream in this {_format(container)} file{has}")
        stream = container.streams.video[0]
        facts = _facts(container, stream)
        try:
            frames, times = _sample(container, stream, facts["duration"], working_size, mode)
        except av.FFmpegError as exc:
            raise VideoError(f"{_format(container)} video that cannot be decoded "
                             f"({_ffmpeg_reason(exc)})") from None
    if not len(times):
        raise VideoError(f"{_format(container)} video with no decodable frame "
                         f"(truncated or damaged)")
    return _finish(frames, times, facts, container, path)


def _finish(frames: list[np.ndarray], times: list[float], facts: dict, container, path: str
            ) -> Sampled:
    stack, t = np.stack(frames), np.asarray(times, np.float64)
    keep = informative(stack)
    if keep.any():        # a video that is all black or one colour keeps its frames
        stack, t = stack[keep], t[keep]
    if len(t) > MAX_FRAMES:
        pick = np.linspace(0, len(t) - 1, MAX_FRAMES).round().astype(int)
        stack, t = stack[pick], t[pick]
    facts["sampled"] = len(t)
    w, h = facts.pop("coded_width"), facts.pop("coded_height")
    if facts["rotation"] in (90, 270):
        w, h = h, w
    poster = int(np.argmin(np.abs(t - t[len(t) // 2])))     # a frame from the middle
    return Sampled(stack, t, poster, facts, w, h, _format(container, path))


def informative(frames: np.ndarray) -> np.ndarray:
    """Which frames carry identity: not black, not one colour, not a fade to or from one
    (a fade keeps too little contrast to tell two videos apart)."""
    grey = frames.mean(axis=-1) if frames.ndim == 4 else frames.astype(np.float32)
    mean = grey.mean(axis=(1, 2))
    spread = grey.std(axis=(1, 2))
    # a dark photo (a night shot) keeps its contrast; black, a colour and a fade do not
    return (mean > 8) & (mean < 247) & (spread > 10)


def _facts(container, stream) -> dict:
    """Duration, frame rate, codec, coded size, rotation, audio, creation date."""
    duration = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    if not duration and container.duration:
        duration = container.duration / 1_000_000
    rate = stream.average_rate or stream.guessed_rate
    cc = stream.codec_context
    return {"duration": duration, "fps": float(rate) if rate else None,
            "codec": cc.name, "coded_width": cc.width, "coded_height": cc.height,
            "rotation": _rotation(container, stream),
            "audio": bool(container.streams.audio),
            **_created(container.metadata, stream.metadata),
            "frames": stream.frames or None}


def _rotation(container, stream) -> int:
    """The display matrix's turn, counterclockwise, as 0/90/180/270 (read off the first
    frame: FFmpeg exports a stream's matrix to its frames)."""
    import av

    try:
        container.seek(0, stream=stream)
        for frame in container.decode(stream):
            return int(round(frame.rotation / 90.0)) % 4 * 90
    except av.FFmpegError:
        return 0
    return 0


def _created(*metadata: dict) -> dict:
    """The container's creation date (QuickTime/MP4 ``creation_time``, Matroska
    ``DATE``); a zero date (1904/1970, what cameras write unset) is none."""
    for md in metadata:
        for key in ("com.apple.quicktime.creationdate", "creation_time", "date", "DATE"):
            text = (md or {}).get(key)
            if not text:
                continue
            try:
                when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
            except ValueError:
                continue
            if when.year > 1971:
                return {"taken_at": when.replace(tzinfo=None).isoformat(),
                        "taken_from": f"container:{key}"}
    return {"taken_at": None, "taken_from": None}


def sample_times(duration: float | None) -> list[float]:
    """The times to sample: every second of the first 30 s, and the middle of each
    16th of the whole (all of them for an unknown duration: the start only)."""
    first = FIRST_SECONDS if duration is None else min(FIRST_SECONDS, duration)
    times = {round(t, 3) for t in np.arange(0.0, first, 1.0)}
    if duration:
        times |= {round(duration * (k + 0.5) / FRACTIONS, 3) for k in range(FRACTIONS)}
    return sorted(times)


def _sample(container, stream, duration, working_size: int, mode: str
            ) -> tuple[list[np.ndarray], list[float]]:
    import av

    cc = stream.codec_context
    scale = SAMPLE_SIDE / max(cc.width or SAMPLE_SIDE, cc.height or SAMPLE_SIDE, 1)
    size = (max(2, int(round((cc.width or SAMPLE_SIDE) * min(1.0, scale)))),
            max(2, int(round((cc.height or SAMPLE_SIDE) * min(1.0, scale)))))
    frames: list[np.ndarray] = []
    times: list[float] = []
    seen: set[int] = set()
    start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
    for t in sample_times(duration):
        try:
            frame = _frame_near(container, stream, start + t)
        except (av.EOFError, StopIteration):
            continue
        if frame is None or frame.pts in seen:
            continue
        seen.add(frame.pts)
        frames.append(_working(frame, size, working_size, mode))
        times.append(max(0.0, float(frame.time or 0.0) - start))
    return frames, times


def _frame_near(container, stream, t: float):
    """The keyframe at or before ``t``; when it is further than the tolerance, the frame
    reached decoding forward from it within the budget."""
    cc = stream.codec_context
    cc.skip_frame = "NONKEY"
    container.seek(max(0, int(t / stream.time_base)), stream=stream, backward=True)
    key = next(container.decode(stream), None)
    if key is None or key.time is None or t - key.time <= KEY_TOLERANCE:
        return key
    cc.skip_frame = "DEFAULT"
    best, budget = key, FORWARD_FRAMES
    for frame in container.decode(stream):
        if frame.time is None or frame.time > t + 0.02:
            break
        best, budget = frame, budget - 1
        if budget <= 0 or frame.time >= t - 0.02 or frame.time - key.time > FORWARD_SECONDS:
            break
    return best


def _working(frame, size: tuple[int, int], working_size: int, mode: str) -> np.ndarray:
    """The frame scaled in the decoder's format, turned upright, at the working size."""
    rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1],
                           interpolation="AREA")
    turn = int(round((frame.rotation or 0) / 90.0)) % 4
    if turn:
        rgb = np.ascontiguousarray(np.rot90(rgb, turn))
    return finish(Image.fromarray(rgb), 1, mode, working_size)


def _unopened(path: str, exc: Exception) -> str:
    """Why a file named as a video did not open: what its first bytes say it is."""
    from ..discover import sniff_video

    with open(path, "rb") as fh:
        head = fh.read(200)
    if head[4:8] == b"ftyp" or sniff_video(head):
        kind = "MP4/QuickTime" if head[4:8] == b"ftyp" else "video"
        return (f"{kind} file truncated or damaged: its index cannot be read "
                f"({_ffmpeg_reason(exc)})")
    return "not a video alice-gpu can read (no known container in its first bytes)"


def _format(container, path: str = "") -> str:
    """The container's name for people: MP4, MOV, 3GP, MKV, AVI, MPEG-TS..."""
    name = container.format.name if container.format else ""
    fmt = _FORMATS.get(name, name.split(",")[0].upper() or "video")
    ext = os.path.splitext(path)[1].lower()
    if fmt == "MP4" and ext in (".mov", ".qt", ".3gp", ".3g2"):
        return "MOV" if ext in (".mov", ".qt") else "3GP"
    return fmt


def _ffmpeg_reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip().splitlines()[0][:160]


def poster(path: str, size: int) -> Image.Image:
    """The video's poster frame for people: the first frame with something in it from
    the middle on (the same choice as the index's poster), upright, long side ``size``."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            duration = _facts(container, stream)["duration"] or 0.0
            for t in (duration / 2, duration / 4, 3 * duration / 4, 0.0):
                frame = _frame_near(container, stream, t)
                if frame is None:
                    continue
                im = frame.to_image()
                turn = int(round((frame.rotation or 0) / 90.0)) % 4
                if turn:
                    im = im.rotate(90 * turn, expand=True)
                grey = np.asarray(im.convert("L").resize((64, 64)))[None]
                if informative(grey)[0] or t == 0.0:
                    im.thumbnail((size, size), Image.Resampling.LANCZOS)
                    return im
    except av.FFmpegError as exc:
        raise VideoError(_ffmpeg_reason(exc)) from None
    raise VideoError("no decodable frame")


def frames_near(path: str, t: float, span: float = 1.0, side: int = 32
                ) -> list[tuple[float, np.ndarray]]:
    """Every frame within ``span`` seconds of ``t`` as (time, upright grey ``side`` x
    ``side`` thumbnail): decoded from the keyframe before, a few dozen frames at most."""
    import av

    out: list[tuple[float, np.ndarray]] = []
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        container.seek(max(0, int((start + t - span) / stream.time_base)), stream=stream,
                       backward=True)
        for frame in container.decode(stream):
            when = (frame.time or 0.0) - start
            if when > t + span or len(out) > 8 * FORWARD_FRAMES:
                break
            if when >= t - span:
                small = frame.to_ndarray(format="gray", width=side, height=side,
                                         interpolation="BILINEAR")
                turn = int(round((frame.rotation or 0) / 90.0)) % 4
                out.append((when, np.ascontiguousarray(np.rot90(small, turn))))
    return out


def frame_image(path: str, t: float) -> Image.Image:
    """The frame at ``t`` seconds (the first at or after it), upright, full size."""
    import av

    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        container.seek(max(0, int((start + t - 0.01) / stream.time_base)), stream=stream,
                       backward=True)
        last = None
        for frame in container.decode(stream):
            last = frame
            if (frame.time or 0.0) - start >= t - 0.005:
                break
        if last is None:
            raise VideoError("no frame at that time")
        im = last.to_image()
        turn = int(round((last.rotation or 0) / 90.0)) % 4
        return im.rotate(90 * turn, expand=True) if turn else im
