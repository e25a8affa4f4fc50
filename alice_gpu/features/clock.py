"""Where the features stage reports its seconds: a protocol, so that the stage, the
compute under it and any engine's timer meet here without importing one another."""

from __future__ import annotations

from typing import Protocol


class StageClock(Protocol):
    """Where the stage reports its seconds (``transfer``, ``compute``, ``decode``)."""

    def add(self, stage: str, seconds: float) -> None: ...
