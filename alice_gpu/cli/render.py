"""The command line, output: one-line messages, JSON and CSV emitters, tables, summaries.

rich (tables, the progress bar) is imported only for output meant for a
person, so ``--json`` runs and scripts do not pay for it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..actions import human_bytes
from ..discover import VIDEO_SKIPPED
from ..errors import command_line


def show_path(path: str) -> str:
    """A path safe to print: undecodable bytes and control characters escaped."""
    if path.isprintable():          # the common case, checked in C
        return path
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def command(*args: Any, db: Path | str | None = None) -> str:
    """A command line a user can paste as it is, with the ``--db`` this run was given
    (without one, the same default applies to both)."""
    return command_line(*args, *(("--db", db) if db is not None else ()))


def say(message: str) -> None:
    """One line on stderr (messages stay one line, never rich markup)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def emit_json(doc: Any, stream=None) -> None:
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


def emit_bytes(text: str) -> None:
    """Text on stdout with non-UTF-8 file names as their original bytes."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:                       # a text-only stream (tests, notebooks)
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8", "surrogateescape"))
    buffer.flush()


def emit_csv(result: Any) -> None:
    """Duplicates as CSV rows on stdout; a non-UTF-8 file name keeps its original bytes."""
    import csv
    import io

    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["group", "keep", "path", "id", "width", "height", "size", "tier", "score",
                     "transform", "edit", "verified", "inliers", "residual"])
    for n, group in enumerate(result.groups, 1):
        for f in group.files:
            ev = f.evidence or {}
            writer.writerow([n, int(f.path == group.keeper), f.path, f.id, f.width, f.height,
                             f.size, f.tier or "", "" if f.score is None else f.score,
                             f.transform, f.edit,
                             "" if not ev else int(bool(ev.get("verified"))),
                             ev.get("inliers", ""), ev.get("residual", "")])
    emit_bytes(text.getvalue())


def hex64(value) -> str | None:
    """A stored hash as imagehash prints it."""
    from ..features.hashes_np import hash_hex

    return None if value is None else hash_hex(int(value))


# ------------------------------------------------------------------ index

class Progress:
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
            emit_json({"event": "progress", "stage": ev.stage, "done": ev.done,
                       "total": ev.total, "failed": ev.failed, "committed": ev.committed},
                      sys.stderr)
        elif self.bar is not None and ev.stage == "discover":
            self.bar.update(self.task, description=f"found {ev.total} files", refresh=True)
        elif self.bar is not None:
            self.bar.update(self.task, description="indexing", completed=ev.done, total=ev.total,
                            failed=ev.failed, refresh=True)

    def __enter__(self) -> "Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def index_summary(summary, folder: Path, db: Path | None) -> None:
    """The end of an index run for a person: the table, the metrics, what to look at."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="alice-gpu index", show_header=False, box=None)
    rows = [("files seen", summary.files_seen), ("decoded", summary.decoded),
            ("unchanged", summary.unchanged), ("failed", summary.failed),
            ("removed", summary.removed), ("reused", summary.reused)]
    if getattr(summary, "renamed", 0):
        rows.append(("renamed", f"{summary.renamed} (moved or renamed: ids kept, not decoded)"))
    if summary.driver_files:
        rows.append(("done by the driver", summary.driver_files))
    rows += [("seconds", f"{summary.seconds:.2f}"), ("files/s", f"{summary.files_per_second:.1f}"),
             ("device", summary.device)]
    if summary.runtime and summary.runtime != "none":
        rows.append(("runtime", summary.runtime + (" (int8)" if summary.space == "int8" else "")))
    rows += [("workers", summary.workers),
             ("batch size", summary.batch_size), ("index", show_path(str(folder)))]
    for label, value in rows:
        table.add_row(label, Text(str(value)))
    out = console()
    out.print(table)
    m = summary.metrics
    if m:
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in m["stage_seconds"].items())
        out.print(f"metrics: {m['files_processed']} files processed in "
                  f"{m['processing_time']:.2f}s ({m['average_file_time'] * 1000:.1f} ms/file), "
                  f"peak memory {m['memory_usage_mb']:.0f} MB, cache hit rate "
                  f"{m['cache_hit_rate']:.1%}, batch efficiency {m['batch_efficiency']:.1%}; "
                  f"stages: {stages}", markup=False)
    index_notes(summary, db)


def index_notes(summary, db: Path | None) -> None:
    """What a person should know after a run: nothing found, files skipped, failures."""
    skipped = dict(summary.skipped)
    videos = skipped.pop(VIDEO_SKIPPED, 0)
    if videos:        # once a run: how to have them indexed
        say(f"{videos} video(s) skipped: video support is not installed; "
            f"enable it with: pip install 'alice-gpu[video]'")
    if skipped:
        kinds = ", ".join(f"{ext} {n}" for ext, n in
                          sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))[:8])
        say(f"{sum(skipped.values())} files skipped as unsupported, by extension "
            f"({kinds})")
    if summary.files_seen == 0:
        say("no images found under the given paths (alice-gpu reads JPEG, PNG, HEIC/HEIF, AVIF, "
            "WebP, GIF, TIFF, BMP and a few more, and videos with alice-gpu[video])")
    if summary.removals_held:
        say(f"{summary.removals_held} indexed files have vanished (more than half): "
            f"kept; run with --prune to remove them")
    if summary.failed:
        say(f"{summary.failed} file(s) failed; first ones:")
        for f in summary.failed_files[:5]:
            say(f"  {show_path(f.path)}: {f.error}")
        say(f"see them all with: {command('stats', '--json', db=db)}")


# ------------------------------------------------------------------ duplicates

def _how(result: Any) -> str:
    if result.by == "tiered":
        checks = getattr(result, "checks", None) or {}
        checked = (f"; {checks['checked']} candidate pairs checked on their pictures, "
                   f"{checks['copies']} copies" if checks.get("candidates") else "")
        unchecked = (f", {checks['unchecked']} not checked (a file is not there)"
                     if checks.get("unchecked") else "")
        return f"tiers {','.join(result.tiers)}{checked}{unchecked}"
    return f"by {result.by}, threshold {result.threshold}"


def _checked(f: Any) -> str:
    """A member's check against the keeper, in one line."""
    ev = f.evidence
    if not ev.get("verified"):
        return f"not a copy: {ev.get('reason') or 'not checked'}"
    how = (f"{ev['inliers']} matching features" if ev.get("method") == "keypoints"
           else "same pixels")
    return f"copy ({how}, residual {ev.get('residual', 0):.1f}): {f.edit}"


def duplicates_text(result: Any) -> str:
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
            if f.evidence and f.path != group.keeper:
                lines.append(f"  {'':<34} {_checked(f)}")
    if result.groups:
        files = sum(len(g.files) for g in result.groups)
        lines.append(f"{len(result.groups)} groups, {files} files ({_how(result)})")
    return "\n".join(lines) + "\n"


def moves_text(report: Any) -> str:
    lines = []
    if report.dry_run:
        lines += [f"would move {show_path(m.src)} -> {show_path(m.dst)}" for m in report.planned]
        lines.append(f"dry run: {len(report.planned)} files would move; nothing was moved")
    else:
        if report.resumed:
            lines.append(f"finished {report.resumed} moves a stopped run had left")
        journal = report.journal or ""
        lines.append(f"moved {report.moved} files; journal: {show_path(journal)}"
                     + (f" (undo: {command('undo', journal)})" if journal else ""))
    lines += [f"not moved: {show_path(p['path'])}: {p['reason']}" for p in report.problems]
    return "\n".join(lines) + "\n"
