"""The command line (Typer): the app, how errors become one line and an exit code, the entry.

Exit codes: 0 success; 1 the run completed but some files failed (or could not
be moved); 2 usage error, bad query image or unusable input; 3 the index is
locked by another process; 4 storage failure after a safe rollback; 5 a query
over its memory budget; 70 an unexpected error (a bug: ``--debug`` shows the
traceback); 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any, Callable, Sequence

import typer

from ..errors import (ConfigError, DeviceError, ModelError, QueryError, QueryMemoryError,
                      StorageError, StoreError, StoreLockedError)
from .render import command, say

EXIT_OK, EXIT_FAILED_FILES, EXIT_USAGE, EXIT_LOCKED, EXIT_STORAGE = 0, 1, 2, 3, 4
EXIT_MEMORY, EXIT_SOFTWARE, EXIT_INTERRUPTED = 5, 70, 130
DEBUG_FLAG = "--debug"

app = typer.Typer(name="alice-gpu", no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="GPU-accelerated perceptual hashes, embeddings and near-duplicate "
                       "search for large media collections. Add --debug to any command to "
                       "see a traceback instead of the one-line error.")


class Exit(Exception):
    """Stop the command with this exit code (its message, if any, is already printed)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def fail(message: str, code: int) -> Exit:
    say(f"alice-gpu: error: {message}")
    return Exit(code)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the API, turning its known errors into messages and exit codes."""
    try:
        return fn(*args, **kwargs)
    except StoreLockedError as exc:
        raise fail(str(exc), EXIT_LOCKED) from None
    except StorageError as exc:
        raise fail(str(exc), EXIT_STORAGE) from None
    except QueryMemoryError as exc:
        raise fail(str(exc), EXIT_MEMORY) from None
    except (ConfigError, DeviceError, ModelError, QueryError, StoreError) as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def open_api(db, config, profile: str | None = None, runtime: str | None = None):
    """The Python API on the index ``--db`` names (or the default one); ``runtime``:
    ``--runtime``, over the config's ``features.runtime``."""
    from ..api import open_index
    from ..config import load_config

    def opened():
        cfg = load_config(config, profile=profile)
        return open_index(db, config=cfg.with_overrides(features__runtime=runtime))

    return call(opened)


def _unexpected(exc: BaseException, argv: list[str], debug: bool) -> int:
    """The last resort: any error nobody expected is one line and exit 70 (``--debug``:
    the traceback too), never a bare traceback."""
    if debug:
        traceback.print_exception(exc)
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    say(f"alice-gpu: error: unexpected {type(exc).__name__}" + (f": {first}" if first else ""))
    if not debug:
        say(f"this is a bug in alice-gpu; to see where, run: {command(*argv, DEBUG_FLAG)}")
    return EXIT_SOFTWARE


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` anywhere before a ``--``: taken out, and the traceback shown."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end]
    return ([a for k, a in enumerate(argv) if not (k < end and a == DEBUG_FLAG)], debug)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; returns the exit code (the Python entry for tests)."""
    args, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    if debug:
        logging.getLogger("alice_gpu").setLevel(logging.DEBUG)
    cmd = typer.main.get_command(app)
    try:
        code = cmd.main(args=args, prog_name="alice-gpu", standalone_mode=False)
    except Exit as stop:
        return stop.code
    except typer.Exit as done:                  # --help, --show-completion...
        return done.exit_code
    except typer.Abort:                         # Ctrl-C outside a run's own handling
        say("alice-gpu: interrupted")
        return EXIT_INTERRUPTED
    except typer.TyperException as exc:         # usage errors: the parser's message, exit 2
        exc.show()
        return getattr(exc, "exit_code", EXIT_USAGE)
    except KeyboardInterrupt:
        say("alice-gpu: interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, exit 70
        return _unexpected(exc, args, debug)
    return code if isinstance(code, int) else EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="alice-gpu: %(levelname)s: %(message)s")
    sys.exit(run())
