"""The local engine: a distributor over the stage callables.

:mod:`.pool` (the decode workers), :mod:`.dispatch` (files to the workers, records
back in order), :mod:`.writer` (the store's one writer thread), :mod:`.metrics`,
and :mod:`.run` (``run_index``: the steps of one run).
"""

from .run import FailedFile, IndexSummary, Interrupted, ProgressEvent, ProgressFn, run_index

__all__ = ["FailedFile", "IndexSummary", "Interrupted", "ProgressEvent", "ProgressFn",
           "run_index"]
