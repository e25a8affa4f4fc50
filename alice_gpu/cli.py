"""The command line: parse flags, call the Python API, print. Nothing else lives here.

Exit codes: 0 success; 1 the run completed but some files failed; 2 usage
error, bad query image or unusable input; 3 the index is locked by another
process.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from .config import load_config
from .errors import (ConfigError, DeviceError, ModelError, QueryError, StorageError, StoreError,
                     StoreLockedError)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="GPU-accelerated perceptual hashes, embeddings and near-duplicate search "
                       "for large media collections.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # messages stay one line

EXIT_OK, EXIT_FAILED_FILES, EXIT_USAGE, EXIT_LOCKED, EXIT_STORAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

DbOpt = typer.Option(None, "--db", help="Index folder (default: $ALICE_GPU_DB or "
                     "$XDG_DATA_HOME/alice-gpu/default).", show_default=False)
JsonOpt = typer.Option(False, "--json", help="Print one JSON document for scripts.")
ConfigOpt = typer.Option(None, "--config", help="YAML config file (see configs/default.yaml).",
                         show_default=False)
ProfileOpt = typer.Option(None, "--profile", show_default=False,
                          help="Named configuration: default | fast | memory | large (configs/).")


def show_path(path: str) -> str:
    """A path safe to print: undecodable bytes and control characters escaped."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _fail(message: str, code: int) -> "typer.Exit":
    err.print(f"alice-gpu: error: {message}", markup=False)
    return typer.Exit(code)


def _open(db: Optional[Path], config: Optional[Path], profile: Optional[str] = None):
    from .api import open_index

    return open_index(db, config=load_config(config, profile=profile))


def _run(fn, *args: Any, **kwargs: Any) -> Any:
    """Call the API, turning its known errors into messages and exit codes."""
    try:
        return fn(*args, **kwargs)
    except StoreLockedError as exc:
        raise _fail(str(exc), EXIT_LOCKED) from None
    except StorageError as exc:
        raise _fail(str(exc), EXIT_STORAGE) from None
    except (ConfigError, DeviceError, ModelError, QueryError, StoreError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


def _emit_json(doc: Any) -> None:
    """One JSON document. A non-UTF-8 file name keeps its bytes as \\udcXX escapes
    (Python's surrogateescape), so scripts get it back losslessly."""
    text = json.dumps(doc, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(doc, ensure_ascii=True, default=str)
    sys.stdout.write(text + "\n")


@app.command()
def index(
    paths: List[Path] = typer.Argument(..., help="Folders or files to index."),
    db: Optional[Path] = DbOpt,
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (default auto).",
                                         show_default=False),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, show_default=False,
                                             help="Images per device batch."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, show_default=False,
                                          help="CPU decode workers (capped at the cores present)."),
    no_embed: bool = typer.Option(False, "--no-embed", help="Hashes only, no embeddings."),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="Also retry unchanged files that failed before."),
    prune: bool = typer.Option(False, "--prune",
                               help="Remove indexed files even when more than half vanished."),
    decode: Optional[str] = typer.Option(None, "--decode", show_default=False,
                                         help="cpu (Pillow, default) | gpu (nvJPEG for JPEGs; CUDA)."),
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Build or update the index: new and changed files are decoded, vanished ones dropped."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise _fail(f"no such file or folder: {show_path(str(missing[0]))}", EXIT_USAGE)
    api = _run(_open, db, config, profile)
    show_bar = not as_json and err.is_terminal
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=err, disable=not show_bar, transient=False)
    task = progress.add_task("discovering", total=None, failed=0)

    def on_progress(ev) -> None:
        if ev.stage == "discover":
            progress.update(task, description=f"found {ev.total} files")
        else:
            progress.update(task, description="indexing", completed=ev.done, total=ev.total,
                            failed=ev.failed)

    from .pipeline import Interrupted

    try:
        with progress:
            summary = _run(api.index, [str(p) for p in paths], device=device,
                           embed=False if no_embed else None, batch_size=batch_size,
                           workers=workers, retry_failed=retry_failed, decode=decode, prune=prune,
                           progress=on_progress)
    except Interrupted as stopped:
        s = stopped.summary
        if as_json:
            _emit_json(s.to_dict())
        err.print(f"interrupted: {s.decoded + s.reused + s.failed} files done and committed, "
                  f"{s.pending} pending; run the same command again to finish", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        _emit_json(summary.to_dict())
    else:
        table = Table(title="alice-gpu index", show_header=False, box=None)
        for label, value in (("files seen", summary.files_seen), ("decoded", summary.decoded),
                             ("unchanged", summary.unchanged), ("failed", summary.failed),
                             ("removed", summary.removed), ("reused", summary.reused),
                             ("seconds", f"{summary.seconds:.2f}"),
                             ("files/s", f"{summary.files_per_second:.1f}"),
                             ("device", summary.device), ("workers", summary.workers),
                             ("batch size", summary.batch_size), ("index", str(api.folder))):
            table.add_row(label, str(value))
        out.print(table)
        m = summary.metrics
        if m:
            stages = ", ".join(f"{k} {v:.2f}s" for k, v in m["stage_seconds"].items())
            out.print(f"metrics: {m['files_processed']} files processed in "
                      f"{m['processing_time']:.2f}s ({m['average_file_time'] * 1000:.1f} ms/file), "
                      f"peak memory {m['memory_usage_mb']:.0f} MB, cache hit rate "
                      f"{m['cache_hit_rate']:.1%}, batch efficiency {m['batch_efficiency']:.1%}; "
                      f"stages: {stages}", markup=False)
        if summary.removals_held:
            err.print(f"{summary.removals_held} indexed files have vanished (more than half): "
                      f"kept; run with --prune to remove them", markup=False)
        if summary.failed:
            err.print(f"{summary.failed} file(s) failed; first ones:", markup=False)
            for f in summary.failed_files[:5]:
                err.print(f"  {show_path(f.path)}: {f.error}", markup=False)
            err.print("see them all with: alice-gpu stats --json", markup=False)
    raise typer.Exit(EXIT_FAILED_FILES if summary.failed else EXIT_OK)


@app.command()
def similar(
    image: Path = typer.Argument(..., help="Query image (inside the index or not)."),
    k: int = typer.Option(10, "--k", min=1, help="How many results."),
    by: str = typer.Option("embedding", "--by", help="embedding | phash | dhash | ahash | whash."),
    db: Optional[Path] = DbOpt,
    device: Optional[str] = typer.Option(None, "--device", show_default=False,
                                         help="Device for a query image outside the index."),
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Top-k look-alikes of one image, best first."""
    api = _run(_open, db, config)
    result = _run(api.similar, str(image), k=k, by=by, device=device)
    if as_json:
        _emit_json(result.to_dict())
        return
    table = Table(title=f"similar to {show_path(result.query)} (by {by})")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    if by != "embedding":
        table.add_column("bits", justify="right")
    table.add_column("path", overflow="fold")
    for n, m in enumerate(result.results, 1):
        cells = [str(n), f"{m.score:.4f}"]
        if by != "embedding":
            cells.append(str(m.distance))
        table.add_row(*cells, show_path(m.path))
    out.print(table)


@app.command()
def duplicates(
    by: str = typer.Option("phash", "--by", help="phash | dhash | ahash | whash | embedding."),
    threshold: Optional[float] = typer.Option(None, "--threshold", show_default=False,
                                              help="Max Hamming bits for hashes (default 10), "
                                                   "min cosine for embeddings (default 0.85)."),
    db: Optional[Path] = DbOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Groups of near-duplicates, largest first."""
    api = _run(_open, db, config)
    result = _run(api.duplicates, by=by, threshold=threshold)
    if as_json:
        _emit_json(result.to_dict())
        return
    if not result.groups:
        out.print(f"no near-duplicates (by {by}, threshold {result.threshold})")
        return
    for n, group in enumerate(result.groups, 1):
        out.print(f"group {n} ({len(group.files)} files)", markup=False)
        for f in group.files:
            out.print(f"  {show_path(f.path)}", markup=False)
    files = sum(len(g.files) for g in result.groups)
    out.print(f"{len(result.groups)} groups, {files} files (by {by}, threshold {result.threshold})")


@app.command()
def stats(db: Optional[Path] = DbOpt, as_json: bool = JsonOpt,
          config: Optional[Path] = ConfigOpt) -> None:
    """What the index holds: files indexed, failed, embedded, formats, last run."""
    api = _run(_open, db, config)
    info = _run(api.stats)
    if as_json:
        _emit_json(info)
        return
    table = Table(title=f"alice-gpu index at {show_path(info['db'])}", show_header=False, box=None)
    for key in ("assets", "failed", "embedded", "bytes"):
        table.add_row(key, f"{info[key]:,}")
    table.add_row("formats", ", ".join(f"{k} {v}" for k, v in info["formats"].items()) or "-")
    last = info["last_run"]
    if last:
        table.add_row("last run", f"#{last['id']} at {last['finished_at']}: {last['files_seen']} seen, "
                      f"{last['decoded']} decoded, {last['failed']} failed, {last['seconds']:.1f}s")
    out.print(table)
    for f in info["failed_files"]:
        err.print(f"failed: {show_path(f['path'])}: {f['error']}", markup=False)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="alice-gpu: %(levelname)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
