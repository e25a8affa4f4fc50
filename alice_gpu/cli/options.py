"""The command line, shared options: types, choices and the ``find`` filters.

Choices are checked in the parser (exit 2 before an index is opened), shown in
help and completed in the shell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import typer

from ..config import SOURCES, profile_names


def choice(what: str, choices: Sequence[str] | Callable[[], Sequence[str]],
           metavar: str | None = None) -> dict[str, Any]:
    """An option whose values are checked in the parser, shown in help, and completed.

    ``choices`` may be a function, asked only when the option is used.
    """
    known = choices if callable(choices) else (lambda: choices)

    def parse(value: str) -> str:
        if value not in known():
            raise typer.BadParameter(f"unknown {what} {value!r} (choose from "
                                     f"{', '.join(known())})")
        return value

    return {"parser": parse, "metavar": metavar or "[" + "|".join(known()) + "]",
            "autocompletion": lambda incomplete: [c for c in known() if c.startswith(incomplete)]}


def _device(value: str) -> str:
    name = value.lower()
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise typer.BadParameter(f"unknown device {value!r} (choose auto, cpu, cuda or cuda:N)")


def _device_completion(incomplete: str) -> list[str]:
    return [c for c in ("auto", "cpu", "cuda") if c.startswith(incomplete)]


def profiles() -> list[str]:
    try:
        return profile_names()
    except (OSError, ImportError):   # package data unreadable: load_config says so
        return []


DB = typer.Option(None, "--db", help="Index folder (default: $ALICE_GPU_DB or "
                  "$XDG_DATA_HOME/alice-gpu/default).", file_okay=False)
JSON = typer.Option(False, "--json", help="Print one JSON document for scripts.")
CONFIG = typer.Option(None, "--config", help="YAML config file (see configs/default.yaml).",
                      dir_okay=False)
DEVICE = typer.Option(None, "--device", parser=_device, metavar="[auto|cpu|cuda|cuda:N]",
                      autocompletion=_device_completion,
                      help="Where to compute (default: the config's device, auto).")

RUNTIME = typer.Option(None, "--runtime", **choice("--runtime", ("auto", "torch", "onnxruntime")),
                       help="What runs the embedding network (default: the config's, auto: "
                            "torch on CUDA, else the fastest installed CPU runtime).")

# the find filters, shared by find, tag, similar and duplicates
F_TAG = typer.Option(None, "--tag", help="Only files with this tag (repeat: all of them).")
F_SOURCE = typer.Option(None, "--source", help="Only files from this generator: "
                        f"{', '.join(SOURCES)}.")
F_PROMPT = typer.Option(None, "--prompt", help="Only files whose prompt has all these words "
                        "(case-insensitive).")
F_CAMERA = typer.Option(None, "--camera", help="Only photos from a camera whose make or model "
                        "contains this text.")
F_SINCE = typer.Option(None, "--since", metavar="DATE", help="Only files taken (or, without a "
                       "date taken, modified) on or after DATE (YYYY-MM-DD).")
F_UNTIL = typer.Option(None, "--until", metavar="DATE", help="... on or before DATE.")
F_IN = typer.Option(None, "--in", metavar="FOLDER", help="Only files under FOLDER.")
F_FORMAT = typer.Option(None, "--format", help="Only files of this format (jpeg, png, heic, "
                        "avif, webp, ...).")
F_MODEL = typer.Option(None, "--model", help="Only files made with a model whose name "
                       "contains this text.")


F_KIND = typer.Option(None, "--kind", **choice("--kind", ("image", "video")),
                      help="Only images, or only videos.")


def filters(tag, source, prompt, camera, since, until, folder: Path | None, fmt,
            model: str | None = None, kind: str | None = None):
    """The filters as the API takes them; a bad source or format name is a usage error."""
    from ..errors import QueryError
    from ..store.filters import Filters, format_name, source_name

    f = Filters(tuple(tag or ()), source, prompt, camera, since, until,
                None if folder is None else str(folder), fmt, model, kind)
    try:
        if f.source:
            source_name(f.source)
        if f.format:
            format_name(f.format)
    except QueryError as exc:
        raise typer.BadParameter(str(exc)) from None
    return f
