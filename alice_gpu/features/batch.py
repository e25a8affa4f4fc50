"""What every features compute gives back, whichever runtime ran it (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(slots=True)
class Features:
    """One image's result; ``error`` is set (and the rest None) when it failed on the device."""

    hashes: dict[str, int] | None
    embedding: np.ndarray | None
    error: str | None = None


class Pending:
    """Features of one batch, launched on the device; ``result()`` waits for them."""

    def __init__(self, finish: Callable[[], list[Features]]):
        self._finish = finish

    def result(self) -> list[Features]:
        return self._finish()
