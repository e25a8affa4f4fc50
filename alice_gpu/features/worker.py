"""What a CPU decode worker runs: the decode stage, then the CPU part of the features stage.

Torch-free. Any distributor (the local process pool, a Ray task, the main
process for small jobs) calls :func:`decode_and_hash` on a list of files, each
file under its deadline (:mod:`alice_gpu.decode.deadline`); hashing where the
pixels already are saves sending them anywhere, and a hash-only run then
returns records only.
"""

from __future__ import annotations

from typing import Iterable

from ..decode import DecodePlan, Known, decode_files
from ..decode.deadline import DecodeTimeout, within
from ..records import STATUS_OK, Decoded, FileEntry
from .hashes_np import hash_decoded


def decode_and_hash(entries: Iterable[FileEntry], plan: DecodePlan, known: Known | None = None,
                    timeout: float | None = None) -> list[Decoded]:
    """Decode files under ``plan``, each within ``timeout`` seconds (None: no deadline);
    hash them here when ``plan.hash_in_worker``; drop the pixels when
    ``plan.keep_pixels`` is off (records only)."""
    out = []
    for entry in entries:
        try:
            out += within(timeout, lambda e=entry: decode_files([e], plan, known))
        except DecodeTimeout as late:
            out.append(Decoded.failed(entry, str(late)))
    if plan.hash_in_worker:
        hash_decoded(out)
    if not plan.keep_pixels:
        for d in out:
            if d.status == STATUS_OK:
                d.pixels = None
                if d.frames is not None:
                    d.frames.pixels = None
    return out
