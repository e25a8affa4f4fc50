"""The command line, the index and what it knows: index, similar, stats, find, show, tag.

Each command parses, calls :mod:`alice_gpu.api`, and renders; nothing else lives here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from ..config import QUERY_KINDS
from .app import EXIT_FAILED_FILES, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, app, call, fail, \
    open_api
from .options import (CONFIG, DB, DEVICE, F_CAMERA, F_FORMAT, F_IN, F_PROMPT, F_SINCE, F_SOURCE,
                      F_KIND, F_MODEL, F_TAG, F_UNTIL, JSON, RUNTIME, choice, filters,
                      profiles)
from .render import (Progress, console, emit_json, hex64, index_summary, say, show_path)

# ------------------------------------------------------------------ index options
O_BATCH = typer.Option(None, "--batch-size", min=1, help="Images per device batch.")
O_WORKERS = typer.Option(None, "--workers", min=1,
                         help="CPU decode workers (capped at the cores present).")
O_NO_EMBED = typer.Option(False, "--no-embed", help="Hashes only, no embeddings.")
O_RETRY = typer.Option(False, "--retry-failed",
                       help="Also retry unchanged files that failed before.")
O_PRUNE = typer.Option(False, "--prune",
                       help="Remove indexed files even when more than half vanished.")
O_DECODE = typer.Option(None, "--decode", **choice("--decode", ("cpu", "gpu")),
                        help="cpu (default) or gpu (nvJPEG for JPEGs; CUDA).")
O_PROFILE = typer.Option(None, "--profile", **choice("profile", profiles, metavar="NAME"),
                         help="Named configuration: default, fast, memory, large (configs/).")
O_PROGRESS = typer.Option("auto", "--progress",
                          **choice("--progress", ("auto", "bar", "jsonl", "none")),
                          help="auto: a bar on a terminal; jsonl: one JSON object per event "
                               "on stderr, for programs.")
# Rich reads help as markup: \[ keeps the extra's brackets on screen
O_ENGINE = typer.Option("local", "--engine", **choice("--engine", ("local", "ray")),
                        help="local (default): this machine's processes; ray: a Ray cluster "
                             "(pip install 'alice-gpu\\[distributed]').")
O_ADDRESS = typer.Option(None, "--address", help="With --engine ray: the cluster (e.g. "
                         "10.0.0.1:6379 or auto); default: start Ray on this machine.")
O_GPUS = typer.Option(None, "--num-gpus-per-worker", min=0.0, help="With --engine ray: GPUs "
                      "each features actor asks for (default 1 when the cluster has GPUs; "
                      "0.5 puts two on a GPU).")
A_PATHS = typer.Argument(..., metavar="PATH...", help="Folders or files to index.")


@app.command()
def index(paths: List[Path] = A_PATHS, device: Optional[str] = DEVICE,
          runtime: Optional[str] = RUNTIME,
          batch_size: Optional[int] = O_BATCH, workers: Optional[int] = O_WORKERS,
          no_embed: bool = O_NO_EMBED, retry_failed: bool = O_RETRY, prune: bool = O_PRUNE,
          decode: Optional[str] = O_DECODE, profile: Optional[str] = O_PROFILE,
          progress: str = O_PROGRESS, engine: str = O_ENGINE, address: Optional[str] = O_ADDRESS,
          gpus_per_worker: Optional[float] = O_GPUS, db: Optional[Path] = DB,
          json_out: bool = JSON, config: Optional[Path] = CONFIG) -> int:
    """Build or update the index: new and changed files are decoded, vanished ones dropped."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise fail(f"no such file or folder: {show_path(str(missing[0]))}", EXIT_USAGE)
    if engine != "ray" and (address is not None or gpus_per_worker is not None):
        raise typer.BadParameter("--address and --num-gpus-per-worker go with --engine ray",
                                 param_hint="'--engine'")
    api = open_api(db, config, profile, runtime)
    from ..pipeline import Interrupted

    try:
        with Progress(progress, json_out) as on_progress:
            summary = call(api.index, [str(p) for p in paths], device=device,
                           embed=False if no_embed else None, batch_size=batch_size,
                           workers=workers, retry_failed=retry_failed, decode=decode,
                           prune=prune, progress=on_progress, engine=engine,
                           address=address, gpus_per_worker=gpus_per_worker)
    except Interrupted as stopped:
        return interrupted(stopped.summary, json_out)
    if json_out:
        emit_json(summary.to_dict())
    else:
        index_summary(summary, api.folder, db)
    return EXIT_FAILED_FILES if summary.failed else EXIT_OK


def interrupted(s, json_out: bool) -> int:
    """What a stopped run committed, and exit 130."""
    if json_out:
        emit_json(s.to_dict())
    say(f"interrupted: {s.decoded + s.reused + s.failed} files done and committed, "
        f"{s.pending} pending; run the same command again to finish")
    return EXIT_INTERRUPTED


# ------------------------------------------------------------------ similar
A_IMAGE = typer.Argument(..., metavar="IMAGE", help="Query image (inside the index or not).")
O_K = typer.Option(None, "--k", min=1, help="How many results (default 10).")
O_BY = typer.Option("embedding", "--by", **choice("--by", QUERY_KINDS),
                    help="What makes two images alike.")


@app.command()
def similar(image: Path = A_IMAGE, k: Optional[int] = O_K, by: str = O_BY,
            device: Optional[str] = DEVICE, runtime: Optional[str] = RUNTIME,
            tag: Optional[List[str]] = F_TAG,
            source: Optional[str] = F_SOURCE, prompt: Optional[str] = F_PROMPT,
            camera: Optional[str] = F_CAMERA, since: Optional[str] = F_SINCE,
            until: Optional[str] = F_UNTIL, folder: Optional[Path] = F_IN,
            fmt: Optional[str] = F_FORMAT,
            model: Optional[str] = F_MODEL, kind: Optional[str] = F_KIND, db: Optional[Path] = DB, json_out: bool = JSON,
            config: Optional[Path] = CONFIG) -> int:
    """Top-k look-alikes of one image, best first (among the files the filters keep)."""
    chosen = filters(tag, source, prompt, camera, since, until, folder, fmt, model, kind)
    api = open_api(db, config, runtime=runtime)
    result = call(api.similar, str(image), k=k, by=by, device=device,
                  filters=None if chosen.empty() else chosen)
    if json_out:
        emit_json(result.to_dict())
        return EXIT_OK
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"similar to {show_path(result.query)} (by {by})"))
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    if by != "embedding":
        table.add_column("bits", justify="right")
    table.add_column("path", overflow="fold")
    for n, m in enumerate(result.results, 1):
        cells = [str(n), f"{m.score:.4f}"] + ([str(m.distance)] if by != "embedding" else [])
        table.add_row(*cells, Text(show_path(m.path)))
    console().print(table)
    return EXIT_OK


# ------------------------------------------------------------------ find, show, stats
O_LIMIT = typer.Option(None, "--limit", min=1, help="At most this many.")


@app.command()
def find(tag: Optional[List[str]] = F_TAG, source: Optional[str] = F_SOURCE,
         prompt: Optional[str] = F_PROMPT, camera: Optional[str] = F_CAMERA,
         since: Optional[str] = F_SINCE, until: Optional[str] = F_UNTIL,
         folder: Optional[Path] = F_IN, fmt: Optional[str] = F_FORMAT,
         model: Optional[str] = F_MODEL, kind: Optional[str] = F_KIND,
         limit: Optional[int] = O_LIMIT, db: Optional[Path] = DB, json_out: bool = JSON,
         config: Optional[Path] = CONFIG) -> int:
    """Files by what made them, when, where and their tags (every file without filters)."""
    chosen = filters(tag, source, prompt, camera, since, until, folder, fmt, model, kind)
    api = open_api(db, config)
    if json_out:
        call(_find_json, api, chosen, limit)
        return EXIT_OK
    rows = call(api.find_lines, chosen, limit=limit)
    out = []
    for path, what, prompt_text, tags in rows:
        line = f"{show_path(path)}\t{what}"
        if prompt_text:
            line += f"\t{show_path(prompt_text)}"
        if tags:
            line += f"\t[{tags}]"
        out.append(line)
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))
    say(f"{len(rows)} files")
    return EXIT_OK


def _find_json(api, chosen, limit: int | None) -> None:
    """``find --json``: the document is assembled in a spooled file (memory: one chunk
    and at most 16 MiB), then written whole, so an error mid-way prints no half document."""
    import tempfile

    with tempfile.SpooledTemporaryFile(16 << 20, mode="w+", encoding="utf-8",
                                       errors="surrogateescape") as doc:
        doc.write('{"results": [')
        sep = ""
        for docs in api.find_json(chosen, limit=limit):
            doc.write(sep + ", ".join(docs))
            sep = ", "
        doc.write("]}\n")
        doc.seek(0)
        while chunk := doc.read(1 << 20):
            sys.stdout.write(chunk)
    sys.stdout.flush()


@app.command()
def show(path: Path = typer.Argument(..., metavar="PATH", help="A file in the index."),
         db: Optional[Path] = DB, json_out: bool = JSON, config: Optional[Path] = CONFIG) -> int:
    """Everything the index knows about one file."""
    api = open_api(db, config)
    row = call(api.show, path)
    from ..config import HASH_NAMES

    doc = {k: (hex64(v) if k in HASH_NAMES else v) for k, v in row.items()}
    doc["phash_orient"] = [hex64(v) for v in row.get("phash_orient") or []]
    if json_out:
        emit_json(doc)
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


@app.command()
def stats(db: Optional[Path] = DB, json_out: bool = JSON,
          config: Optional[Path] = CONFIG) -> int:
    """What the index holds: files indexed, failed, embedded, formats, last run."""
    api = open_api(db, config)
    info = call(api.stats)
    if json_out:
        emit_json(info)
        return EXIT_OK
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"alice-gpu index at {show_path(info['db'])}"), show_header=False,
                  box=None)
    for key in ("assets", "videos", "failed", "embedded", "bytes"):
        table.add_row(key, f"{info.get(key, 0):,}")
    if info["embedded"]:
        table.add_row("embeddings", f"{info['model']}, {info['space']}")
    table.add_row("formats", Text(", ".join(f"{k} {v}" for k, v in info["formats"].items())
                                  or "-"))
    last = info["last_run"]
    if last:
        table.add_row("last run", f"#{last['id']} at {last['finished_at']}: {last['files_seen']} "
                      f"seen, {last['decoded']} decoded, {last['failed']} failed, "
                      f"{last['seconds']:.1f}s")
    if info.get("skipped"):
        table.add_row("skipped", Text(", ".join(f"{n} {k}" for k, n in info["skipped"].items())))
    console().print(table)
    for f in info["failed_files"]:
        say(f"failed: {show_path(f['path'])}: {f['error']}")
    return EXIT_OK


# ------------------------------------------------------------------ tags
tag_app = typer.Typer(help="Tags: add, remove, list, or derive them from metadata.",
                      no_args_is_help=True)
app.add_typer(tag_app, name="tag")
A_TAG_PATHS = typer.Argument(None, metavar="PATH...", help="Files or folders in the index.")


def _tag_command(add: bool) -> Callable[..., int]:
    """``tag add`` and ``tag remove``: one signature, one body."""
    verb = "Add TAG to" if add else "Remove TAG from"

    def tag_files(tag_name: str = typer.Argument(..., metavar="TAG"),
                  paths: Optional[List[Path]] = A_TAG_PATHS, tag: Optional[List[str]] = F_TAG,
                  source: Optional[str] = F_SOURCE, prompt: Optional[str] = F_PROMPT,
                  camera: Optional[str] = F_CAMERA, since: Optional[str] = F_SINCE,
                  until: Optional[str] = F_UNTIL, folder: Optional[Path] = F_IN,
                  fmt: Optional[str] = F_FORMAT,
                  model: Optional[str] = F_MODEL, kind: Optional[str] = F_KIND, db: Optional[Path] = DB, json_out: bool = JSON,
                  config: Optional[Path] = CONFIG) -> int:
        chosen = filters(tag, source, prompt, camera, since, until, folder, fmt, model, kind)
        if not paths and chosen.empty():
            raise typer.BadParameter("name files or folders, or filters (e.g. --source "
                                     "comfyui); to tag every file use --in /", param_hint="PATH")
        api = open_api(db, config)
        n = call(api.tag, tag_name, add=add, paths=[str(p) for p in paths or ()],
                 filters=chosen)
        if json_out:
            emit_json({"tag": tag_name, "added" if add else "removed": n})
        else:
            sys.stdout.write(f"{'tagged' if add else 'untagged'} {n} files {tag_name!r}\n")
        return EXIT_OK

    tag_files.__doc__ = f"{verb} files (and folders' files) that match the filters, in one batch."
    return tag_files


tag_app.command("add")(_tag_command(True))
tag_app.command("remove")(_tag_command(False))


@tag_app.command("list")
def tag_list(db: Optional[Path] = DB, json_out: bool = JSON,
             config: Optional[Path] = CONFIG) -> int:
    """Every tag with how many files carry it."""
    counts = call(open_api(db, config).tags)
    if json_out:
        emit_json({"tags": [{"tag": t, "files": n} for t, n in counts]})
    else:
        sys.stdout.write("".join(f"{n:8d}  {show_path(t)}\n" for t, n in counts))
    return EXIT_OK


@tag_app.command("auto")
def tag_auto(db: Optional[Path] = DB, json_out: bool = JSON,
             config: Optional[Path] = CONFIG) -> int:
    """Tag every file from its metadata: source:<generator>, model:<name>, camera:<model>."""
    n = call(open_api(db, config).auto_tag)
    if json_out:
        emit_json({"added": n})
    else:
        sys.stdout.write(f"added {n} tags\n")
    return EXIT_OK


# ------------------------------------------------------------------ serve
O_HOST = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by "
                      "default; any other needs --token).")
O_PORT = typer.Option(8765, "--port", min=1, max=65535, help="Port to listen on.")
O_OPEN = typer.Option(False, "--open", help="Open the page in the browser.")
O_READ_ONLY = typer.Option(False, "--read-only", help="Look, search, never act: every "
                           "action is refused, and the index is not held.")
O_TOKEN = typer.Option(None, "--token", help="The token another machine must give (auto: "
                       "made and printed).")
O_SET_ASIDE = typer.Option(None, "--move-to", metavar="DIR", help="Where copies are set "
                           "aside (default ~/alice-gpu-set-aside).")


O_WATCH = typer.Option(None, "--watch", metavar="ROOT", help="Keep the index of ROOT current "
                       "while serving, as `alice-gpu watch ROOT` does (repeatable).")


@app.command()
def serve(db: Optional[Path] = DB, host: str = O_HOST, port: int = O_PORT,
          open_browser: bool = O_OPEN, read_only: bool = O_READ_ONLY,
          token: Optional[str] = O_TOKEN, move_to: Optional[Path] = O_SET_ASIDE,
          watch: Optional[List[Path]] = O_WATCH, config: Optional[Path] = CONFIG) -> int:
    """A local web app: browse, search by image, review duplicates, undo (Ctrl-C stops)."""
    try:
        import fastapi  # noqa: F401 - the [serve] extra
        import jinja2  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise fail("serve needs the web extra: pip install 'alice-gpu[serve]'", EXIT_USAGE)
    from ..web.server import serve as run_server

    api = open_api(db, config)
    call(run_server, api, host, port, read_only=read_only, token=token, move_to=move_to,
         open_browser=open_browser, announce=lambda url: say(f"alice-gpu serve: {url}"),
         watch=[str(p) for p in watch or []])
    # stopped, and the index let go: the process ends here. Threads still at work (a
    # model export, a groups computation, the upload decoder's pool) may be inside
    # native code, where ending the interpreter under them hangs or aborts (SIGABRT)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_OK)
