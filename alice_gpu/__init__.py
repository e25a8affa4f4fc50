"""alice-gpu: GPU-accelerated perceptual hashes and embeddings for large media collections.

The public API is loaded lazily so that decode workers, which import the
decode stage, and queries that need no model, do not pay for it or for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .api import AliceIndex, open_index

__all__ = ["open_index", "AliceIndex", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("open_index", "AliceIndex"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'alice_gpu' has no attribute {name!r}")
