"""The command line (Typer): parse flags, call the Python API, print. Nothing else lives here.

Exit codes: 0 success; 1 the run completed but some files failed; 2 usage
error, bad query image or unusable input; 3 the index is locked by another
process; 4 storage failure after a safe rollback; 130 interrupted.

rich (tables, the progress bar) is imported only for output meant for a
person, so ``--json`` runs and scripts do not pay for it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import typer

from .actions import human_bytes
from .config import (DUPLICATE_KINDS, QUERY_KINDS, load_config, profile_names,
                     threshold_problem)
from .errors import (ConfigError, DeviceError, ModelError, QueryError, QueryMemoryError,
                     StorageError, StoreError, StoreLockedError)

EXIT_OK, EXIT_FAILED_FILES, EXIT_USAGE, EXIT_LOCKED, EXIT_STORAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_MEMORY = 5

app = typer.Typer(name="alice-gpu", no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="GPU-accelerated perceptual hashes, embeddings and near-duplicate "
                       "search for large media collections.")


class Exit(Exception):
    """Stop the command with this exit code (its message, if any, is already printed)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


# ------------------------------------------------------------------ option types

def _choice(what: str, choices: Sequence[str] | Callable[[], Sequence[str]],
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


def _profiles() -> list[str]:
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


# ------------------------------------------------------------------ helpers

# the find filters, shared by find, tag, similar and duplicates
F_TAG = typer.Option(None, "--tag", help="Only files with this tag (repeat: all of them).")
F_SOURCE = typer.Option(None, "--source", help="Only files from this generator: a1111, "
                        "comfyui, invokeai, novelai, fooocus, swarmui, stability-matrix, "
                        "tensorart, civitai, drawthings, midjourney, c2pa, none.")
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


def _filters(tag, source, prompt, camera, since, until, folder, fmt):
    from .store.filters import Filters, format_name, source_name

    f = Filters(tuple(tag or ()), source, prompt, camera, since, until,
                None if folder is None else str(folder), fmt)
    if f.source:
        _run(source_name, f.source)          # a bad name: exit 2 before the index is opened
    if f.format:
        _run(format_name, f.format)
    return f


def show_path(path: str) -> str:
    """A path safe to print: undecodable bytes and control characters escaped."""
    if path.isprintable():          # the common case, checked in C
        return path
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _say(message: str) -> None:
    """One line on stderr (messages stay one line, never rich markup)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _fail(message: str, code: int) -> Exit:
    _say(f"alice-gpu: error: {message}")
    return Exit(code)


def _open(db: Path | None, config: Path | None, profile: str | None = None):
    from .api import open_index

    return open_index(db, config=load_config(config, profile=profile))


def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the API, turning its known errors into messages and exit codes."""
    try:
        return fn(*args, **kwargs)
    except StoreLockedError as exc:
        raise _fail(str(exc), EXIT_LOCKED) from None
    except StorageError as exc:
        raise _fail(str(exc), EXIT_STORAGE) from None
    except QueryMemoryError as exc:
        raise _fail(str(exc), EXIT_MEMORY) from None
    except (ConfigError, DeviceError, ModelError, QueryError, StoreError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


def _emit_csv(result: Any) -> None:
    """Duplicates as CSV rows on stdout; a non-UTF-8 file name keeps its original bytes."""
    import csv
    import io

    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["group", "keep", "path", "id", "width", "height", "size", "tier", "score",
                     "transform"])
    for n, group in enumerate(result.groups, 1):
        for f in group.files:
            writer.writerow([n, int(f.path == group.keeper), f.path, f.id, f.width, f.height,
                             f.size, f.tier or "", "" if f.score is None else f.score,
                             f.transform])
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:                       # a text-only stream (tests, notebooks)
        sys.stdout.write(text.getvalue())
        return
    sys.stdout.flush()
    buffer.write(text.getvalue().encode("utf-8", "surrogateescape"))
    buffer.flush()


def _emit_json(doc: Any, stream=None) -> None:
    """One JSON document on one line. A non-UTF-8 file name keeps its bytes as \\udcXX
    escapes (Python's surrogateescape), so scripts get it back losslessly."""
    text = json.dumps(doc, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(doc, ensure_ascii=True, default=str)
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


# ------------------------------------------------------------------ index

class _Progress:
    """Progress of an index run: a bar for a person, JSON lines for a program, or nothing."""

    def __init__(self, mode: str, json_out: bool):
        if mode == "auto":
            mode = "bar" if not json_out and sys.stderr.isatty() else "none"
        self.mode, self.bar, self.task = mode, None, None
        if mode == "bar":
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
                                TimeElapsedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False,
                                auto_refresh=False)   # no refresh thread: workers fork cleanly
            self.task = self.bar.add_task("discovering", total=None, failed=0)

    def __call__(self, ev) -> None:
        if self.mode == "jsonl":
            _emit_json({"event": "progress", "stage": ev.stage, "done": ev.done,
                        "total": ev.total, "failed": ev.failed, "committed": ev.committed},
                       sys.stderr)
        elif self.bar is not None and ev.stage == "discover":
            self.bar.update(self.task, description=f"found {ev.total} files", refresh=True)
        elif self.bar is not None:
            self.bar.update(self.task, description="indexing", completed=ev.done, total=ev.total,
                            failed=ev.failed, refresh=True)

    def __enter__(self) -> "_Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command()
def index(
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="Folders or files to index."),
    device: Optional[str] = DEVICE,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="Images per device batch."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          help="CPU decode workers (capped at the cores present)."),
    no_embed: bool = typer.Option(False, "--no-embed", help="Hashes only, no embeddings."),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="Also retry unchanged files that failed before."),
    prune: bool = typer.Option(False, "--prune",
                               help="Remove indexed files even when more than half vanished."),
    decode: Optional[str] = typer.Option(None, "--decode", **_choice("--decode", ("cpu", "gpu")),
                                         help="cpu (default) or gpu (nvJPEG for JPEGs; CUDA)."),
    profile: Optional[str] = typer.Option(None, "--profile",
                                          **_choice("profile", _profiles, metavar="NAME"),
                                          help="Named configuration: default, fast, memory, "
                                               "large (configs/)."),
    progress: str = typer.Option("auto", "--progress",
                                 **_choice("--progress", ("auto", "bar", "jsonl", "none")),
                                 help="auto: a bar on a terminal; jsonl: one JSON object per "
                                      "event on stderr, for programs."),
    engine: str = typer.Option("local", "--engine", **_choice("--engine", ("local", "ray")),
                               help="local (default): this machine's processes; ray: a Ray "
                                    "cluster (pip install 'alice-gpu[distributed]')."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the "
                                          "cluster (e.g. 10.0.0.1:6379 or auto); default: "
                                          "start Ray on this machine."),
    gpus_per_worker: Optional[float] = typer.Option(
        None, "--num-gpus-per-worker", min=0.0, help="With --engine ray: GPUs each features "
        "actor asks for (default 1 when the cluster has GPUs; 0.5 puts two on a GPU)."),
    db: Optional[Path] = DB, json_out: bool = JSON, config: Optional[Path] = CONFIG,
) -> int:
    """Build or update the index: new and changed files are decoded, vanished ones dropped."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise _fail(f"no such file or folder: {show_path(str(missing[0]))}", EXIT_USAGE)
    if engine != "ray" and (address is not None or gpus_per_worker is not None):
        raise typer.BadParameter("--address and --num-gpus-per-worker go with --engine ray",
                                 param_hint="'--engine'")
    api = _run(_open, db, config, profile)
    from .pipeline import Interrupted

    try:
        with _Progress(progress, json_out) as on_progress:
            summary = _run(api.index, [str(p) for p in paths], device=device,
                           embed=False if no_embed else None, batch_size=batch_size,
                           workers=workers, retry_failed=retry_failed, decode=decode,
                           prune=prune, progress=on_progress, engine=engine,
                           address=address, gpus_per_worker=gpus_per_worker)
    except Interrupted as stopped:
        return _interrupted(stopped.summary, json_out)
    if json_out:
        _emit_json(summary.to_dict())
    else:
        _print_summary(summary, api.folder)
    return EXIT_FAILED_FILES if summary.failed else EXIT_OK


def _interrupted(s, json_out: bool) -> int:
    """What a stopped run committed, and exit 130."""
    if json_out:
        _emit_json(s.to_dict())
    _say(f"interrupted: {s.decoded + s.reused + s.failed} files done and committed, "
         f"{s.pending} pending; run the same command again to finish")
    return EXIT_INTERRUPTED


def _print_summary(summary, folder: Path) -> None:
    from rich.table import Table

    table = Table(title="alice-gpu index", show_header=False, box=None)
    for label, value in (("files seen", summary.files_seen), ("decoded", summary.decoded),
                         ("unchanged", summary.unchanged), ("failed", summary.failed),
                         ("removed", summary.removed), ("reused", summary.reused),
                         ("seconds", f"{summary.seconds:.2f}"),
                         ("files/s", f"{summary.files_per_second:.1f}"),
                         ("device", summary.device), ("workers", summary.workers),
                         ("batch size", summary.batch_size), ("index", str(folder))):
        table.add_row(label, str(value))
    out = _console()
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
        _say(f"{summary.removals_held} indexed files have vanished (more than half): "
             f"kept; run with --prune to remove them")
    if summary.failed:
        _say(f"{summary.failed} file(s) failed; first ones:")
        for f in summary.failed_files[:5]:
            _say(f"  {show_path(f.path)}: {f.error}")
        _say("see them all with: alice-gpu stats --json")


# ------------------------------------------------------------------ queries

@app.command()
def similar(
    image: Path = typer.Argument(..., metavar="IMAGE", help="Query image (inside the index or not)."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="How many results (default 10)."),
    by: str = typer.Option("embedding", "--by", **_choice("--by", QUERY_KINDS),
                           help="What makes two images alike."),
    device: Optional[str] = DEVICE,
    tag: Optional[List[str]] = F_TAG, source: Optional[str] = F_SOURCE,
    prompt: Optional[str] = F_PROMPT, camera: Optional[str] = F_CAMERA,
    since: Optional[str] = F_SINCE, until: Optional[str] = F_UNTIL,
    folder: Optional[Path] = F_IN, fmt: Optional[str] = F_FORMAT,
    db: Optional[Path] = DB, json_out: bool = JSON, config: Optional[Path] = CONFIG,
) -> int:
    """Top-k look-alikes of one image, best first (among the files the filters keep)."""
    filters = _filters(tag, source, prompt, camera, since, until, folder, fmt)
    api = _run(_open, db, config)
    result = _run(api.similar, str(image), k=k, by=by, device=device,
                  filters=None if filters.empty() else filters)
    if json_out:
        _emit_json(result.to_dict())
        return EXIT_OK
    from rich.table import Table

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
    _console().print(table)
    return EXIT_OK


# Over 60 lines only through its signature: Typer reads the options from it, and the
# body is four named steps (check flags, query, report, print).
@app.command()
def duplicates(
    by: str = typer.Option("tiered", "--by", **_choice("--by", DUPLICATE_KINDS),
                           help="tiered: exact, near (pHash, any orientation) and edited "
                           "copies (embedding); or one signal at one --threshold."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", help="Largest Hamming distance in bits (0..64) of the near tier "
        "(default 8) or of --by <hash> (default 10); with --by embedding the smallest "
        "cosine (-1..1, default 0.85)."),
    tiers: Optional[str] = typer.Option(
        None, "--tiers", metavar="TIERS", help="Tiers to group (tiered): exact,near,edited "
        "(default), add similar for look-alikes."),
    keep: Optional[str] = typer.Option(
        None, "--keep", metavar="RULES", help="Which file of a group to keep: rules in order, "
        "e.g. pixels,format:png>heif>jpeg,size,oldest,path:~/Originals (default "
        "pixels,size,oldest)."),
    device: Optional[str] = DEVICE,
    db: Optional[Path] = DB, json_out: bool = JSON,
    csv_out: bool = typer.Option(False, "--csv", help="Print one CSV row per file (with a "
                                 "header): group, keep, path, id, width, height, size, tier, "
                                 "score, transform."),
    move_to: Optional[Path] = typer.Option(
        None, "--move-to", metavar="DIR", help="Move every non-keeper into DIR (its path "
        "relative to its indexed root kept), with a journal for `alice-gpu undo`. Nothing is "
        "deleted."),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --move-to: print the plan, "
                                 "move nothing."),
    act_on: Optional[str] = typer.Option(
        None, "--act-on", metavar="TIERS", help="The tiers --move-to moves (default "
        "exact,near,edited: look-alikes are never moved unless named)."),
    html: Optional[Path] = typer.Option(
        None, "--html", metavar="FILE", help="Also write one self-contained HTML page with "
        "the groups and their thumbnails."),
    tag: Optional[List[str]] = F_TAG, source: Optional[str] = F_SOURCE,
    prompt: Optional[str] = F_PROMPT, camera: Optional[str] = F_CAMERA,
    since: Optional[str] = F_SINCE, until: Optional[str] = F_UNTIL,
    folder: Optional[Path] = F_IN, fmt: Optional[str] = F_FORMAT,
    config: Optional[Path] = CONFIG,
) -> int:
    """Groups of duplicates, largest first, each with the file to keep and why.

    Exit codes: 0 done; 1 some files could not be moved (each one is listed and left
    where it was); 2 bad usage; 3 index locked; 4 storage failure; 5 over the query
    memory budget.
    """
    _check_duplicates_flags(by, threshold, json_out, csv_out, tiers, keep, act_on, move_to,
                            dry_run)
    filters = _filters(tag, source, prompt, camera, since, until, folder, fmt)
    filters = None if filters.empty() else filters
    api = _run(_open, db, config)
    report = None
    if move_to is not None:
        result, report = _run(api.move_duplicates, move_to, dry_run=dry_run, by=by,
                              threshold=threshold, tiers=tiers, keep=keep, act_on=act_on,
                              device=device, filters=filters)
    else:
        result = _run(api.duplicates, by=by, threshold=threshold, device=device, keep=keep,
                      tiers=tiers, filters=filters)
    if html is not None:
        from .actions.report import write_html

        _run(write_html, result, html)
    return _print_duplicates(result, report, json_out, csv_out, html)


def _check_duplicates_flags(by, threshold, json_out, csv_out, tiers, keep, act_on, move_to,
                            dry_run) -> None:
    """Every bad flag of ``duplicates`` is exit 2 before the index is opened."""
    problem = None if threshold is None else threshold_problem(by, threshold)
    if problem:
        raise typer.BadParameter(problem, param_hint="'--threshold'")
    if json_out and csv_out:
        raise typer.BadParameter("choose one of --json and --csv", param_hint="'--csv'")
    from .search.queries import check_tiers

    if tiers is not None:
        _run(check_tiers, tiers, "tier")
    if keep is not None:
        from .search.keep import parse_keep

        _run(parse_keep, keep)
    if act_on is not None:
        _run(check_tiers, act_on, "--act-on tier")
    if dry_run and move_to is None:
        raise typer.BadParameter("--dry-run goes with --move-to DIR", param_hint="'--dry-run'")


def _print_duplicates(result: Any, report: Any, json_out: bool, csv_out: bool,
                      html: Path | None) -> int:
    """The answer as JSON, CSV or the terminal table (with the moves); the exit code."""
    code = EXIT_FAILED_FILES if report is not None and report.problems else EXIT_OK
    if json_out:
        doc = result.to_dict()
        if report is not None:
            doc["moves"] = report.to_dict()
        _emit_json(doc)
        return code
    if csv_out:
        _emit_csv(result)
        return code
    sys.stdout.write(_duplicates_text(result))
    if report is not None:
        sys.stdout.write(_moves_text(report))
    if html is not None:
        _say(f"report: {show_path(str(html))}")
    return code


def _moves_text(report: Any) -> str:
    lines = []
    if report.dry_run:
        lines += [f"would move {show_path(m.src)} -> {show_path(m.dst)}" for m in report.planned]
        lines.append(f"dry run: {len(report.planned)} files would move; nothing was moved")
    else:
        if report.resumed:
            lines.append(f"finished {report.resumed} moves a stopped run had left")
        lines.append(f"moved {report.moved} files; journal: {show_path(report.journal or '')}"
                     f" (undo: alice-gpu undo {show_path(report.journal or '')})")
    lines += [f"not moved: {show_path(p['path'])}: {p['reason']}" for p in report.problems]
    return "\n".join(lines) + "\n"


@app.command()
def undo(
    journal: Path = typer.Argument(..., metavar="JOURNAL", help="The journal a --move-to "
                                   "wrote (alice-gpu-journal-*.jsonl in its DIR)."),
    db: Optional[Path] = DB, json_out: bool = JSON, config: Optional[Path] = CONFIG,
) -> int:
    """Put back every file a `duplicates --move-to` moved, byte for byte; the index follows.

    A file that now exists at an original path is never overwritten: it is listed and the
    exit code is 1.
    """
    api = _run(_open, db, config)
    report = _run(api.undo, journal)
    code = EXIT_FAILED_FILES if report.problems else EXIT_OK
    if json_out:
        _emit_json(report.to_dict())
        return code
    lines = [f"restored {report.restored} files from {show_path(str(journal))}"]
    lines += [f"not restored: {show_path(p['path'])}: {p['reason']}" for p in report.problems]
    sys.stdout.write("\n".join(lines) + "\n")
    return code


def _how(result: Any) -> str:
    if result.by == "tiered":
        return f"tiers {','.join(result.tiers)}"
    return f"by {result.by}, threshold {result.threshold}"


def _duplicates_text(result: Any) -> str:
    """The terminal table: per group its tier and keeper, per file how it relates to it."""
    lines = []
    if not result.groups:
        lines.append(f"no duplicates ({_how(result)})")
    for n, group in enumerate(result.groups, 1):
        lines.append(f"group {n}: {len(group.files)} files, {group.tier} "
                     f"(keep: {group.keeper_reason})")
        for f in group.files:
            if f.path == group.keeper:
                how = "keep"
            else:
                how = f"{f.tier} {f.score:.3f}" + (f" {f.transform}" if f.transform else "")
            size = f"{f.width}x{f.height}" if f.width else "?"
            lines.append(f"  {how:<34} {size:>11} {human_bytes(f.size):>9}  "
                         f"{show_path(f.path)}")
    if result.groups:
        files = sum(len(g.files) for g in result.groups)
        lines.append(f"{len(result.groups)} groups, {files} files ({_how(result)})")
    return "\n".join(lines) + "\n"


@app.command()
def evaluate(
    ground_truth: Path = typer.Argument(..., metavar="GROUND_TRUTH.csv",
                                        help="CSV with columns file,group (and transform)."),
    by: str = typer.Option("tiered", "--by", **_choice("--by", DUPLICATE_KINDS),
                           help="What duplicates are found by (see duplicates)."),
    threshold: Optional[float] = typer.Option(None, "--threshold",
                                              help="The duplicates threshold (see duplicates)."),
    similar_by: str = typer.Option("embedding", "--similar-by",
                                   **_choice("--similar-by", QUERY_KINDS),
                                   help="What similar ranks by."),
    no_index: bool = typer.Option(False, "--no-index",
                                  help="Do not index the CSV's files first."),
    device: Optional[str] = DEVICE,
    db: Optional[Path] = DB, json_out: bool = JSON, config: Optional[Path] = CONFIG,
) -> int:
    """Score duplicates and similar against a ground truth, overall and per transform."""
    problem = None if threshold is None else threshold_problem(by, threshold)
    if problem:
        raise typer.BadParameter(problem, param_hint="'--threshold'")
    api = _run(_open, db, config)
    result = _run(api.evaluate, ground_truth, by=by, threshold=threshold,
                  similar_by=similar_by, device=device, index=not no_index)
    if json_out:
        _emit_json(result.to_dict())
        return EXIT_OK
    from rich.table import Table

    dup, sim = result.duplicates, result.similar
    table = Table(title=f"{result.files} files in {result.groups} groups: duplicates by "
                        f"{dup['by']} (threshold {dup['threshold']}), similar by {sim['by']}")
    for col in ("transform", "pairs", "precision", "recall", "F1", "queries", "N-S", "mAP"):
        table.add_column(col, justify="left" if col == "transform" else "right")
    rows = [("all", {"duplicates": dup, "similar": sim})] + list(result.per_transform.items())
    for name, fig in rows:
        d, q = fig["duplicates"], fig["similar"]
        table.add_row(name, str(d["true_pairs"]), f"{d['precision']:.3f}", f"{d['recall']:.3f}",
                      f"{d['f1']:.3f}", str(q["queries"]),
                      "-" if q["ns_score"] is None else f"{q['ns_score']:.2f}",
                      "-" if q["map"] is None else f"{q['map']:.3f}")
    _console().print(table)
    return EXIT_OK


def _hex(value) -> str | None:
    return None if value is None else f"{int(value) & 0xFFFFFFFFFFFFFFFF:016x}"


@app.command()
def find(
    tag: Optional[List[str]] = F_TAG, source: Optional[str] = F_SOURCE,
    prompt: Optional[str] = F_PROMPT, camera: Optional[str] = F_CAMERA,
    since: Optional[str] = F_SINCE, until: Optional[str] = F_UNTIL,
    folder: Optional[Path] = F_IN, fmt: Optional[str] = F_FORMAT,
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most this many."),
    db: Optional[Path] = DB, json_out: bool = JSON, config: Optional[Path] = CONFIG,
) -> int:
    """Files by what made them, when, where and their tags (every file without filters)."""
    filters = _filters(tag, source, prompt, camera, since, until, folder, fmt)
    api = _run(_open, db, config)
    if json_out:
        chunks = api.find_json(filters, limit=limit)
        first = _run(next, chunks, None)          # opens the index: errors become messages
        write = sys.stdout.write
        write('{"results": [' + (", ".join(first) if first else ""))
        for docs in chunks:                       # streamed: memory is one chunk
            write(", " + ", ".join(docs))
        write("]}\n")
        sys.stdout.flush()
        return EXIT_OK
    rows = _run(api.find_lines, filters, limit=limit)
    out = []
    for path, what, prompt_text, tags in rows:
        line = f"{show_path(path)}\t{what}"
        if prompt_text:
            line += f"\t{show_path(prompt_text)}"
        if tags:
            line += f"\t[{tags}]"
        out.append(line)
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))
    _say(f"{len(rows)} files")
    return EXIT_OK


@app.command()
def show(
    path: Path = typer.Argument(..., metavar="PATH", help="A file in the index."),
    db: Optional[Path] = DB, json_out: bool = JSON, config: Optional[Path] = CONFIG,
) -> int:
    """Everything the index knows about one file."""
    api = _run(_open, db, config)
    row = _run(api.show, path)
    from .config import HASH_NAMES

    doc = {k: (_hex(v) if k in HASH_NAMES else v) for k, v in row.items()}
    doc["phash_orient"] = [_hex(v) for v in row.get("phash_orient") or []]
    if json_out:
        _emit_json(doc)
        return EXIT_OK
    lines = []
    for key, value in doc.items():
        if value in (None, [], "") or key in ("ai_meta", "phash_orient"):
            continue
        text = str(value).replace("\n", " ")
        lines.append(f"{key:16s} {text[:300] if key != 'path' else show_path(text)}")
    if doc.get("ai_meta"):
        lines.append(f"{'ai_meta':16s} {', '.join(doc['ai_meta'])} (--json for the blocks)")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


tag_app = typer.Typer(help="Tags: add, remove, list, or derive them from metadata.",
                      no_args_is_help=True)
app.add_typer(tag_app, name="tag")


def _tag(add: bool, tag: str, paths, filters, db, config, json_out) -> int:
    if not paths and filters.empty():
        raise typer.BadParameter("name files or folders, or filters (e.g. --source comfyui); "
                                 "to tag every file use --in /", param_hint="PATH")
    api = _run(_open, db, config)
    n = _run(api.tag, tag, add=add, paths=[str(p) for p in paths or ()], filters=filters)
    if json_out:
        _emit_json({"tag": tag, "added" if add else "removed": n})
    else:
        sys.stdout.write(f"{'tagged' if add else 'untagged'} {n} files {tag!r}\n")
    return EXIT_OK


def _tag_command(add: bool) -> Callable[..., int]:
    """``tag add`` and ``tag remove``: one signature, one body."""
    verb = "Add TAG to" if add else "Remove TAG from"

    def command(
        tag_name: str = typer.Argument(..., metavar="TAG"),
        paths: Optional[List[Path]] = typer.Argument(None, metavar="PATH...",
                                                     help="Files or folders in the index."),
        tag: Optional[List[str]] = F_TAG, source: Optional[str] = F_SOURCE,
        prompt: Optional[str] = F_PROMPT, camera: Optional[str] = F_CAMERA,
        since: Optional[str] = F_SINCE, until: Optional[str] = F_UNTIL,
        folder: Optional[Path] = F_IN, fmt: Optional[str] = F_FORMAT,
        db: Optional[Path] = DB, json_out: bool = JSON, config: Optional[Path] = CONFIG,
    ) -> int:
        return _tag(add, tag_name, paths, _filters(tag, source, prompt, camera, since, until,
                                                   folder, fmt), db, config, json_out)

    command.__doc__ = f"{verb} files (and folders' files) that match the filters, in one batch."
    return command


tag_app.command("add")(_tag_command(True))
tag_app.command("remove")(_tag_command(False))


@tag_app.command("list")
def tag_list(db: Optional[Path] = DB, json_out: bool = JSON,
             config: Optional[Path] = CONFIG) -> int:
    """Every tag with how many files carry it."""
    api = _run(_open, db, config)
    counts = _run(api.tags)
    if json_out:
        _emit_json({"tags": [{"tag": t, "files": n} for t, n in counts]})
    else:
        sys.stdout.write("".join(f"{n:8d}  {t}\n" for t, n in counts))
    return EXIT_OK


@tag_app.command("auto")
def tag_auto(db: Optional[Path] = DB, json_out: bool = JSON,
             config: Optional[Path] = CONFIG) -> int:
    """Tag every file from its metadata: source:<generator>, model:<name>, camera:<model>."""
    api = _run(_open, db, config)
    n = _run(api.auto_tag)
    if json_out:
        _emit_json({"added": n})
    else:
        sys.stdout.write(f"added {n} tags\n")
    return EXIT_OK


@app.command()
def stats(db: Optional[Path] = DB, json_out: bool = JSON,
          config: Optional[Path] = CONFIG) -> int:
    """What the index holds: files indexed, failed, embedded, formats, last run."""
    api = _run(_open, db, config)
    info = _run(api.stats)
    if json_out:
        _emit_json(info)
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"alice-gpu index at {show_path(info['db'])}", show_header=False, box=None)
    for key in ("assets", "failed", "embedded", "bytes"):
        table.add_row(key, f"{info[key]:,}")
    table.add_row("formats", ", ".join(f"{k} {v}" for k, v in info["formats"].items()) or "-")
    last = info["last_run"]
    if last:
        table.add_row("last run", f"#{last['id']} at {last['finished_at']}: {last['files_seen']} "
                      f"seen, {last['decoded']} decoded, {last['failed']} failed, "
                      f"{last['seconds']:.1f}s")
    _console().print(table)
    for f in info["failed_files"]:
        _say(f"failed: {show_path(f['path'])}: {f['error']}")
    return EXIT_OK


# ------------------------------------------------------------------ entry points

def run(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; returns the exit code (the Python entry for tests)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=list(argv) if argv is not None else None,
                            prog_name="alice-gpu", standalone_mode=False)
    except Exit as stop:
        return stop.code
    except typer.Exit as done:                  # --help, --show-completion...
        return done.exit_code
    except typer.Abort:                         # Ctrl-C outside a run's own handling
        _say("alice-gpu: interrupted")
        return EXIT_INTERRUPTED
    except typer.TyperException as exc:         # usage errors: the parser's message, exit 2
        exc.show()
        return getattr(exc, "exit_code", EXIT_USAGE)
    return code if isinstance(code, int) else EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="alice-gpu: %(levelname)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
