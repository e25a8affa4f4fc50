"""The command line (Typer): parse flags, call the Python API, print. Nothing else lives here.

:mod:`.app` (the app, error mapping and exit codes, the entry point),
:mod:`.options` (shared options), :mod:`.render` (tables, summaries, JSON
emitters), and the commands: :mod:`.commands` (index, similar, find, show,
stats, tag) and :mod:`.duplicates` (duplicates, undo, evaluate) and :mod:`.organize` (organize, watch).
"""

from . import commands, duplicates, organize  # noqa: F401 - registers the commands on the app
from .app import EXIT_SOFTWARE, app, main, run

__all__ = ["EXIT_SOFTWARE", "app", "main", "run"]
