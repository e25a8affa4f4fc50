"""Search, cache: answers to repeated queries, kept until the index changes.

Imported by the API on first use of a query; cachetools itself is imported only
when a cache is made, so an ``index`` run never loads it.
"""

from __future__ import annotations

import os
from typing import Any


def file_stamp(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(size, mtime_ns) of a file, or (-1, -1): part of a cache key that any write changes."""
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


class QueryCache:
    """Query results kept for ``cache_ttl_seconds``, the ``search_cache_size`` most
    recently used (cachetools' TTL + LRU cache); 0 for either turns it off.

    Keys include the index files' (size, mtime), so any write to the index
    invalidates every cached answer.
    """

    def __init__(self, size: int, ttl: float):
        self.size, self.ttl = size, ttl
        self._items: Any = None
        self.hits = self.misses = 0

    def _cache(self) -> Any:
        """The TTL cache, made on first use (an `index` run never imports cachetools)."""
        if self._items is None and self.size > 0 and self.ttl > 0:
            from cachetools import TTLCache

            self._items = TTLCache(self.size, self.ttl)
        return self._items

    def get(self, key: tuple) -> Any | None:
        items = self._cache()
        value = None if items is None else items.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: tuple, value: Any) -> None:
        items = self._cache()
        if items is not None:
            items[key] = value

