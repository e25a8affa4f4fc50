"""Pipeline: the run over its engines, every engine a distributor over the stage callables.

:mod:`.stages` (the decode plan, the features stage built for a device, the
engine protocol), :mod:`.local` (the local engine: :mod:`.pool` of decode
workers, :mod:`.dispatch` of files to them), :mod:`.ray_engine` (the same stages
on a Ray cluster), :mod:`.writer` (the store's one writer thread),
:mod:`.metrics`, and :mod:`.run` (``run_index``: the steps of one run).
"""

from .run import FailedFile, IndexSummary, Interrupted, ProgressEvent, ProgressFn, run_index

__all__ = ["FailedFile", "IndexSummary", "Interrupted", "ProgressEvent", "ProgressFn",
           "run_index"]
