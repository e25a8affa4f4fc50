"""Stage 1, discover: walk roots, keep media files, and tell new/changed from unchanged.

Change detection compares (size, mtime_ns) from ``stat`` with what the store
knows, so an unchanged file is never opened.
"""

from __future__ import annotations

import logging
import os
import time
import stat as statmod
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from .records import FileEntry

log = logging.getLogger(__name__)

MEDIA_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib",
    ".tif", ".tiff", ".mpo", ".avif", ".avifs", ".heic", ".heics", ".heif", ".heifs", ".hif",
    ".ppm", ".pgm", ".pbm", ".tga", ".ico",
})

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".mkv", ".webm", ".avi", ".mts",
    ".m2ts", ".mpg", ".mpeg", ".wmv", ".asf", ".flv", ".ogv", ".insv", ".lrv",
})
# what a skipped video is counted as without the [video] extra (``Discovery.skipped``)
VIDEO_SKIPPED = "video: install alice-gpu[video]"
# ISO-BMFF brands of video files (phones, cameras, encoders, screen recorders)
_VIDEO_BRANDS = (b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1",
                 b"qt  ", b"M4V ", b"M4VP", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"MSNV",
                 b"dash", b"XAVC", b"mmp4", b"f4v ", b"kddi", b"hvc1", b"av01", b"cmfc")

# leading bytes of the formats we decode; used for files with no/unknown extension
_MAGIC: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),            # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),       # PNG
    (0, b"GIF87a"), (0, b"GIF89a"),
    (0, b"BM"),                      # BMP
    (0, b"II*\x00"), (0, b"MM\x00*"),  # TIFF
    (8, b"WEBP"),                    # RIFF....WEBP
    # ISO-BMFF brands of AVIF and HEIF (phones: heic/heix, cameras' .hif: heix/hevc, bursts)
    (4, b"ftypavif"), (4, b"ftypavis"), (4, b"ftypheic"), (4, b"ftypheix"), (4, b"ftyphevc"),
    (4, b"ftyphevx"), (4, b"ftypheim"), (4, b"ftypheis"), (4, b"ftypmif1"), (4, b"ftypmsf1"),
)


@dataclass(frozen=True)
class Discovery:
    """What a walk found, split against the store's known state."""

    todo: list[FileEntry]          # new or changed: must be decoded
    unchanged: list[FileEntry]     # same (size, mtime_ns): skipped unopened
    removed: list[str]             # known to the store under a walked root, gone from disk
    files_seen: int
    skipped: dict[str, int] = field(default_factory=dict)   # not media: count by extension
    deferred: list[FileEntry] = field(default_factory=list)  # still being written: later


def sniff_media(path: str) -> bool:
    """True when the first bytes look like an image we can decode."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    return any(head[off:off + len(magic)] == magic for off, magic in _MAGIC)


def sniff_video(head: bytes) -> bool:
    """True when leading bytes are a video container's: ISO-BMFF (MP4, MOV, 3GP) with a
    video brand, Matroska/WebM, AVI, MPEG-TS (sync bytes 188 apart) or MPEG-PS."""
    if head[4:8] == b"ftyp":
        return head[8:12] in _VIDEO_BRANDS
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free") and len(head) >= 8:
        return True                                    # old QuickTime, no ftyp
    return (head[:4] == b"\x1aE\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
            or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)
            or head[:4] == b"\x00\x00\x01\xba")


def _head(path: str, n: int = 200) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def video_support() -> bool:
    """True when PyAV (the ``[video]`` extra) is installed; without it videos are
    counted as skipped (``VIDEO_SKIPPED``), never silently ignored."""
    from importlib.util import find_spec

    global _VIDEO_SUPPORT
    if _VIDEO_SUPPORT is None:
        _VIDEO_SUPPORT = find_spec("av") is not None
    return _VIDEO_SUPPORT


_VIDEO_SUPPORT: bool | None = None


def is_video(path: str) -> bool:
    """A video by its extension (``.ts``, and files with no extension, by content)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTENSIONS:
        return True
    return ext in (".ts", "", ".bin", ".dat", ".tmp", ".download") and sniff_video(_head(path))


def is_media(path: str) -> bool:
    """Extension first (cheap), content sniffing for files without a media extension;
    videos only with the ``[video]`` extra."""
    ext = os.path.splitext(path)[1].lower()
    if ext in MEDIA_EXTENSIONS:
        return True
    if ext in VIDEO_EXTENSIONS or ext == ".ts":
        return video_support() and is_video(path)
    if ext in ("", ".bin", ".dat", ".tmp", ".download"):
        return sniff_media(path) or (video_support() and sniff_video(_head(path)))
    return False


def _skipped_kind(path: str, name: str) -> str:
    """How a file that is not indexed is counted: a video without the extra as such,
    anything else by its extension."""
    if not video_support() and is_video(path):
        return VIDEO_SKIPPED
    return _kind(name)


def normalize_path(path: str | os.PathLike[str]) -> str:
    """The key a file is stored under: absolute, normalised, symlinks not resolved."""
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def _kind(name: str) -> str:
    """How a skipped file is counted: its extension, lower case."""
    return os.path.splitext(name)[1].lower() or "(no extension)"


def _scan(folder: str) -> tuple[list[FileEntry], list[str], Counter]:
    """Media files and sub-folders of one folder (links, FIFOs, sockets, devices skipped),
    and the other visible files counted by extension."""
    files: list[FileEntry] = []
    subdirs: list[str] = []
    skipped: Counter = Counter()
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        log.warning("cannot list %s: %s", folder, exc.strerror)
        return files, subdirs, skipped
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
                continue
            if not entry.is_file(follow_symlinks=False):
                continue  # symlinks, FIFOs, sockets, devices: never opened
            if not is_media(entry.path):
                if not entry.name.startswith("."):
                    skipped[_skipped_kind(entry.path, entry.name)] += 1
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # vanished while listing
        files.append(FileEntry(entry.path, st.st_size, st.st_mtime_ns))
    return files, subdirs, skipped


def walk(roots: Iterable[str | os.PathLike[str]], threads: int = 1,
         skipped: Counter | None = None) -> Iterator[FileEntry]:
    """Yield every regular media file under ``roots``, folder by folder (iterative);
    ``skipped`` counts the other files by extension.

    With ``threads`` > 1 the folders of each level are listed and stat'ed on a
    thread pool (``parallel_metadata_extraction``): the system calls release the GIL.
    """
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        for root in roots:
            root = normalize_path(root)
            try:
                st = os.stat(root)
            except OSError as exc:
                log.warning("cannot read %s: %s", root, exc.strerror)
                continue
            if statmod.S_ISREG(st.st_mode):
                if is_media(root):
                    yield FileEntry(root, st.st_size, st.st_mtime_ns)
                elif skipped is not None:
                    skipped[_skipped_kind(root, root)] += 1
                continue
            level = [root]
            while level:
                results = pool.map(_scan, level) if pool and len(level) > 1 else map(_scan, level)
                nxt: list[str] = []
                for files, subdirs, other in results:
                    yield from files
                    nxt.extend(subdirs)
                    if skipped is not None:
                        skipped.update(other)
                level = nxt
    finally:
        if pool is not None:
            pool.shutdown()


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _settling(entries: list[FileEntry], settle: float) -> set[str]:
    """The files changed (written, or their mtime set) less than ``settle`` seconds ago:
    a copy may still be under way. ctime counts too: setting an old mtime sets it."""
    now = time.time()
    out = set()
    for e in entries:
        try:
            st = os.lstat(e.path)
        except OSError:
            continue
        if now - max(st.st_mtime, st.st_ctime) < settle:
            out.add(e.path)
    return out


def discover(roots: Iterable[str | os.PathLike[str]],
             known: Mapping[str, tuple[int, int]], threads: int = 1,
             settle: float = 0.0) -> Discovery:
    """Split the files under ``roots`` into todo / unchanged, and list vanished ones.

    ``known`` maps stored paths to (size, mtime_ns) of files whose features are
    complete; files outside it are always re-done. Removals are only reported
    under roots that exist, so an unmounted drive does not empty the index.
    """
    roots = [normalize_path(r) for r in roots]
    todo: list[FileEntry] = []
    unchanged: list[FileEntry] = []
    seen: set[str] = set()
    skipped: Counter = Counter()
    for entry in walk(roots, threads, skipped):
        if entry.path in seen:
            continue
        seen.add(entry.path)
        if known.get(entry.path) == (entry.size, entry.mtime_ns):
            unchanged.append(entry)
        else:
            todo.append(entry)
    deferred: list[FileEntry] = []
    if settle > 0 and todo:
        busy = _settling(todo, settle)
        deferred = [e for e in todo if e.path in busy]
        todo = [e for e in todo if e.path not in busy]
    present_roots = [r for r in roots if os.path.exists(r)]
    removed = sorted(p for p in known if p not in seen and _under(p, present_roots)
                     and not os.path.exists(p))
    return Discovery(todo=todo, unchanged=unchanged, removed=removed, files_seen=len(seen),
                     skipped=dict(skipped), deferred=deferred)

