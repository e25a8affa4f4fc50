"""The command line, files in their places: organize and watch."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from .app import EXIT_FAILED_FILES, EXIT_OK, EXIT_USAGE, app, call, fail, open_api
from .options import CONFIG, DB, JSON
from .render import Progress, command, emit_json, say, show_path

A_ROOTS = typer.Argument(..., metavar="ROOT...", help="Folders whose files are organised.")
O_TO = typer.Option(..., "--to", metavar="DEST", help="Where the files go (outside every ROOT).")
O_TEMPLATE = typer.Option(None, "--template", metavar="T", help="Where in DEST: a preset (date: "
                          "{taken:%Y}/{taken:%Y-%m-%d}/{name}, the default; alice: "
                          "YYYY-MM-DD/<project>/<source>/) or a template of fields, e.g. "
                          "'{taken:%Y}/{camera|source|\"unknown\"}/{stem}{ext}' (docs/organize.md).")
O_COPY = typer.Option(False, "--copy", help="Copy the files (mtime kept); the originals stay.")
O_MOVE = typer.Option(False, "--move", help="Move the files (the default); the index follows.")
O_LINK = typer.Option(False, "--link", help="Hard-link the files (same filesystem only).")
O_DRY = typer.Option(False, "--dry-run", help="Print the plan; touch no file.")
O_PROGRESS = typer.Option("auto", "--progress", help="auto, bar, json or none (indexing first).")


@app.command()
def organize(roots: List[Path] = A_ROOTS, to: Path = O_TO, template: Optional[str] = O_TEMPLATE,
             copy: bool = O_COPY, move: bool = O_MOVE, link: bool = O_LINK,
             dry_run: bool = O_DRY, progress: str = O_PROGRESS, db: Optional[Path] = DB,
             json_out: bool = JSON, config: Optional[Path] = CONFIG) -> int:
    """Put each file under DEST by its date taken, camera, generator... (nothing decoded).

    Files not indexed yet are indexed first. Same bytes already at the destination:
    left in place, counted as a duplicate; other bytes there: a numeric suffix; never
    an overwrite. Every action is journalled: `alice-gpu undo JOURNAL` puts all back.
    """
    if copy + move + link > 1:
        raise fail("choose one of --copy, --move, --link", EXIT_USAGE)
    how = "copy" if copy else "link" if link else "move"
    missing = [p for p in roots if not p.exists()]
    if missing:
        raise fail(f"no such folder: {show_path(str(missing[0]))}", EXIT_USAGE)
    api = open_api(db, config)
    with Progress(progress, json_out) as on_progress:
        report = call(api.organize, [str(p) for p in roots], str(to), template=template,
                      how=how, dry_run=dry_run, progress=on_progress)
    if json_out:
        emit_json(report.to_dict())
    else:
        sys.stdout.write(organize_text(report))
    return EXIT_FAILED_FILES if report.problems else EXIT_OK


def organize_text(r: Any) -> str:
    verb = {"move": "moved", "copy": "copied", "link": "linked"}[r.how]
    lines = []
    if r.dry_run:
        lines += [f"would {r.how} {show_path(f['src'])} -> {show_path(f['dst'])}"
                  for f in r.files if f["action"] == r.how]
    if r.resumed:
        lines.append(f"finished {r.resumed} actions a stopped run had left")
    lines += [f"duplicate, left in place: {show_path(f['src'])} (same bytes at "
              f"{show_path(f['dst'])})" for f in r.files if f["action"] == "duplicate"]
    counts = (f"{r.duplicates} duplicates left in place, {r.suffixed} given a numeric suffix, "
              f"{r.not_indexed} not indexed (left in place)")
    if r.dry_run:
        lines.append(f"dry run: {r.planned} files would be {verb} into {show_path(r.dest)}; "
                     f"{counts}; nothing was touched")
    else:
        lines.append(f"{verb} {r.done} files into {show_path(r.dest)}; {counts}")
        if r.journal:
            lines.append(f"journal: {show_path(r.journal)} (undo: {command('undo', r.journal)})")
    lines += [f"not {verb}: {show_path(p['path'])}: {p['reason']}" for p in r.problems]
    return "\n".join(lines) + "\n"


O_POLL = typer.Option(None, "--poll", min=0.1, metavar="SECONDS", help="Poll every SECONDS "
                      "instead of using change events (chosen by itself on network and FUSE "
                      "filesystems, or past the inotify watch limit).")
O_SETTLE = typer.Option(None, "--settle", min=0.0, metavar="SECONDS", help="A file is indexed "
                        "once unchanged this long (default 3): a copy under way is not read.")
O_RECONCILE = typer.Option(None, "--reconcile", min=1.0, metavar="SECONDS", help="A full scan "
                           "this often, for what events missed (default 600).")


@app.command()
def watch(roots: List[Path] = A_ROOTS, poll: Optional[float] = O_POLL,
          settle: Optional[float] = O_SETTLE, reconcile: Optional[float] = O_RECONCILE,
          db: Optional[Path] = DB, json_out: bool = JSON,
          config: Optional[Path] = CONFIG) -> int:
    """Keep the index of ROOTs current as files arrive, change, move and go (Ctrl-C stops).

    While it runs it holds the index: other alice-gpu commands are answered by it, and
    an `alice-gpu index` is carried out by it. With --json, one JSON line per pass.
    """
    missing = [p for p in roots if not p.exists()]
    if missing:
        raise fail(f"no such folder: {show_path(str(missing[0]))}", EXIT_USAGE)
    api = open_api(db, config)

    def on_pass(doc: dict) -> None:
        if json_out:
            emit_json(doc)
            sys.stdout.flush()
        else:
            line = pass_text(doc)
            if line:
                say(line)

    call(api.watch, [str(p) for p in roots], poll=poll, settle=settle, reconcile=reconcile,
         on_pass=on_pass)
    return EXIT_OK


def pass_text(doc: dict) -> str | None:
    """A person's line for a watcher's event (None: nothing worth a line)."""
    if doc["event"] == "watching":
        how = f"polling every {doc['poll']:g} s" if doc["polling"] else "change events"
        return (f"watching {', '.join(show_path(r) for r in doc['roots'])} ({how}, files "
                f"indexed once unchanged {doc['settle']:g} s); Ctrl-C stops")
    if doc["event"] == "stopped":
        return "stopped; everything indexed so far is committed"
    if doc["event"] == "paused":
        return (f"{', '.join(show_path(p) for p in doc['unmounted'])} was unmounted: waiting "
                f"for it; nothing is removed from the index")
    if doc["event"] == "resumed":
        return "mounted again: scanning"
    parts = [f"{k} {doc[k]}" for k in ("indexed", "removed", "renamed", "failed") if doc[k]]
    if doc["deferred"]:
        parts.append(f"{doc['deferred']} still being written")
    if doc["removals_held"]:
        parts.append(f"{doc['removals_held']} vanished files kept (more than half of a "
                     f"folder gone at once: unmounted?)")
    if not parts and doc["why"] != "start":
        return None
    stamp = time.strftime("%H:%M:%S", time.localtime(doc["at"]))
    return f"{stamp} {doc['why']}: " + (", ".join(parts) or f"{doc['unchanged']} files, "
                                        f"nothing new")
