"""API, media: pictures of indexed files for people, search by an image's bytes, and
moving chosen files aside; a mixin of :class:`~.index.AliceIndex`.

Files are named by their id in the index, never by a path from a request.
Thumbnails follow a cache hierarchy: an in-memory LRU (``search_cache_size``
entries), then a disk cache in the index folder (``thumbs/``, WebP, capped at
``THUMB_CACHE_MB`` with the least recently used evicted), then the original
file, decoded with the index's own guards (:mod:`alice_gpu.decode.thumbs`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .routing import routed

if TYPE_CHECKING:
    from ..actions.moves import MoveReport
    from ..search.queries import SimilarResult
    from ..store import Store
    from ..store.filters import Filters

THUMB_SIZE = 288              # px, the long side
THUMB_CACHE_MB = 512          # the disk cache's cap
THUMB_DIR = "thumbs"
FULL_SIZE = 8192              # px: a rendered full-size picture (a format browsers lack)
MAX_UPLOAD = 64 << 20         # bytes of an uploaded query image


class Media:
    """The picture and moving half of the API (see :class:`~.index.AliceIndex`)."""

    folder: Any
    config: Any
    _open: Callable[[bool], "Store"]
    similar: Callable[..., "SimilarResult"]

    def _thumb_cache(self) -> "ThumbCache":
        cache = getattr(self, "_thumbs", None)
        if cache is None:
            cache = self._thumbs = ThumbCache(Path(self.folder) / THUMB_DIR, THUMB_CACHE_MB,
                                              self.config.performance.search_cache_size)
        return cache

    def _source(self, asset_id: int) -> dict[str, Any]:
        from ..errors import QueryError

        with self._open(read_only=True) as store:
            rows = store.assets_by_ids([int(asset_id)])
        row = rows.get(int(asset_id))
        if row is None:
            raise QueryError(f"no file with id {asset_id} in the index")
        return row

    @routed
    def thumbnail(self, asset_id: int, size: int = THUMB_SIZE) -> bytes:
        """A WebP thumbnail of a file in the index (upright, long side ``size``)."""
        from ..decode.thumbs import render

        row = self._source(asset_id)
        key = f"{int(asset_id)}-{int(size)}-{row['size']}-{row['mtime_ns']}"
        if row.get("kind") == "video":              # its poster frame
            return self._thumb_cache().get(key, lambda: _poster(row["path"], int(size)))
        return self._thumb_cache().get(key, lambda: render(_read(row["path"]), int(size)))

    @routed
    def image(self, asset_id: int) -> tuple[bytes, str]:
        """A file as a browser shows it, full size: its own bytes (JPEG, PNG, WebP, GIF),
        or a JPEG rendering (HEIC, AVIF, TIFF...). Returns (bytes, media type)."""
        from ..decode.thumbs import BROWSER_FORMATS, render

        row = self._source(asset_id)
        if row.get("kind") == "video":              # the poster frame, not the video
            return _poster(row["path"], FULL_SIZE, "JPEG"), "image/jpeg"
        data = _read(row["path"])
        if row.get("format") in BROWSER_FORMATS:
            return data, BROWSER_FORMATS[row["format"]]
        return render(data, FULL_SIZE, "JPEG", 90), "image/jpeg"

    def similar_upload(self, data: bytes, *, k: int | None = None, by: str = "embedding",
                       filters: "Filters | None" = None) -> "SimilarResult":
        """Look-alikes of an image given as bytes (an upload): size-capped, decoded in a
        worker process with the index's limits, featurised by the resident model."""
        from ..errors import QueryError

        if len(data) > MAX_UPLOAD:
            raise QueryError(f"an image of {len(data):,} bytes is over the "
                             f"{MAX_UPLOAD:,}-byte limit")
        if not data:
            raise QueryError("an empty upload")
        with tempfile.TemporaryDirectory(prefix="alice-upload-") as tmp:
            path = os.path.join(tmp, "upload")
            with open(path, "wb") as fh:
                fh.write(data)
            return self.similar(path, k=k, by=by, filters=filters, isolated=True)

    @routed
    def similar_to(self, asset_id: int, *, k: int | None = None, by: str = "embedding",
                   filters: "Filters | None" = None) -> "SimilarResult":
        """Look-alikes of a file of the index by its id, from its stored features (the
        file itself is not read: an asset page answers even when its file is away)."""
        from ..search.queries import similar_to
        from .index import _allowed, _query_memory

        cfg = self.config
        k = k or cfg.query.k
        key = self._cache_key("similar_to", int(asset_id), k, by, filters)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with self._open(read_only=True) as store, _query_memory(cfg), \
                self._vectors(store, cfg) as vectors:
            result = similar_to(store, vectors, int(asset_id), k=k, by=by, device=cfg.device,
                                allowed=_allowed(store, filters))
        self.cache.put(key, result)
        return result

    @routed
    def move_aside(self, ids: Iterable[int], move_to: str | os.PathLike[str]) -> "MoveReport":
        """Move these files (by id) into ``move_to``, each under its path relative to the
        folder it was indexed under, with a journal for :meth:`undo`; the index follows.
        What ``duplicates --move-to`` does with the non-keepers it chose."""
        from ..actions.moves import move_ids

        with self._moving():
            return move_ids(lambda read_only: self._open(read_only),
                            [int(i) for i in ids], os.fspath(move_to))

    @routed
    def journals(self, move_to: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """The move journals in ``move_to`` that belong to this index, newest first."""
        from ..actions.moves import list_journals

        with self._open(read_only=True) as store:
            return list_journals(store, os.fspath(move_to))


class ThumbCache:
    """Memory, then disk, then the maker: the seed's cache hierarchy for thumbnails."""

    def __init__(self, folder: Path, cap_mb: int, entries: int):
        from cachetools import LRUCache

        self.folder, self.cap = folder, cap_mb << 20
        self.memory: LRUCache = LRUCache(max(1, entries))
        self.lock = threading.Lock()
        self.disk_bytes: int | None = None

    def get(self, key: str, make: Callable[[], bytes]) -> bytes:
        with self.lock:
            data = self.memory.get(key)
        if data is not None:
            return data
        path = self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.webp"
        try:
            data = path.read_bytes()
            os.utime(path)                       # recently used: evicted last
        except OSError:
            data = make()
            self._store(path, data)
        with self.lock:
            self.memory[key] = data
        return data

    def _store(self, path: Path, data: bytes) -> None:
        try:
            self.folder.mkdir(exist_ok=True)
            tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:                          # a read-only or full disk: memory only
            return
        with self.lock:
            if self.disk_bytes is None:
                self.disk_bytes = sum(p.stat().st_size for p in self.folder.glob("*.webp"))
            self.disk_bytes += len(data)
            if self.disk_bytes > self.cap:
                self._evict()

    def _evict(self) -> None:
        """The least recently used files go until the cache is at 90% of its cap."""
        files = sorted(self.folder.glob("*.webp"), key=lambda p: p.stat().st_mtime)
        for p in files:
            if self.disk_bytes <= 0.9 * self.cap:
                break
            try:
                size = p.stat().st_size
                p.unlink()
                self.disk_bytes -= size
            except OSError:
                pass


def _read(path: str) -> bytes:
    from ..errors import QueryError

    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise QueryError(f"cannot read {path}: {exc.strerror}") from None


def _poster(path: str, size: int, fmt: str = "WEBP") -> bytes:
    """A video's poster frame as ``fmt`` bytes; a video that cannot be read is a
    one-line error, as an unreadable picture is."""
    from ..decode.thumbs import render_file
    from ..errors import QueryError

    try:
        return render_file(path, size, fmt)
    except OSError as exc:
        raise QueryError(f"cannot read {path}: {exc.strerror}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged video: said in one line
        raise QueryError(f"cannot show a frame of {path}: {exc}") from None
