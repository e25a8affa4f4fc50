"""The command line, acting on copies: duplicates (and its moves), undo, evaluate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..config import DUPLICATE_KINDS, QUERY_KINDS, threshold_problem
from .app import EXIT_FAILED_FILES, EXIT_OK, app, call, open_api
from .options import (CONFIG, DB, DEVICE, F_CAMERA, F_FORMAT, F_IN, F_PROMPT, F_SINCE, F_SOURCE,
                      F_KIND, F_MODEL, F_TAG, F_UNTIL, JSON, RUNTIME, choice, filters)
from .render import console, duplicates_text, emit_csv, emit_json, moves_text, say, show_path

O_BY = typer.Option("tiered", "--by", **choice("--by", DUPLICATE_KINDS),
                    help="tiered: exact, near (pHash, any orientation) and edited copies "
                         "(embedding); or one signal at one --threshold.")
O_THRESHOLD = typer.Option(None, "--threshold", help="Largest Hamming distance in bits (0..64) "
                           "of the near tier (default 8) or of --by <hash> (default 10); with "
                           "--by embedding the smallest cosine (-1..1, default 0.85).")
O_TIERS = typer.Option(None, "--tiers", metavar="TIERS", help="Tiers to group (tiered): "
                       "exact,near,edited (default), add similar for look-alikes.")
O_KEEP = typer.Option(None, "--keep", metavar="RULES", help="Which file of a group to keep: "
                      "rules in order, e.g. pixels,format:png>heif>jpeg,size,oldest,"
                      "path:~/Originals (default pixels,size,oldest).")
O_CSV = typer.Option(False, "--csv", help="Print one CSV row per file (with a header): group, "
                     "keep, path, id, width, height, size, tier, score, transform.")
O_MOVE_TO = typer.Option(None, "--move-to", metavar="DIR", help="Move every non-keeper into "
                         "DIR (its path relative to its indexed root kept), with a journal for "
                         "`alice-gpu undo`. Nothing is deleted.")
O_DRY_RUN = typer.Option(False, "--dry-run", help="With --move-to: print the plan, move nothing.")
O_ACT_ON = typer.Option(None, "--act-on", metavar="TIERS", help="The tiers --move-to moves "
                        "(default exact,near,edited: look-alikes are never moved unless named).")
O_HTML = typer.Option(None, "--html", metavar="FILE", help="Also write one self-contained HTML "
                      "page with the groups and their thumbnails.")


@app.command()
def duplicates(by: str = O_BY, threshold: Optional[float] = O_THRESHOLD,
               tiers: Optional[str] = O_TIERS, keep: Optional[str] = O_KEEP,
               device: Optional[str] = DEVICE, db: Optional[Path] = DB, json_out: bool = JSON,
               csv_out: bool = O_CSV, move_to: Optional[Path] = O_MOVE_TO,
               dry_run: bool = O_DRY_RUN, act_on: Optional[str] = O_ACT_ON,
               html: Optional[Path] = O_HTML, tag: Optional[List[str]] = F_TAG,
               source: Optional[str] = F_SOURCE, prompt: Optional[str] = F_PROMPT,
               camera: Optional[str] = F_CAMERA, since: Optional[str] = F_SINCE,
               until: Optional[str] = F_UNTIL, folder: Optional[Path] = F_IN,
               fmt: Optional[str] = F_FORMAT,
               model: Optional[str] = F_MODEL, kind: Optional[str] = F_KIND, config: Optional[Path] = CONFIG) -> int:
    """Groups of duplicates, largest first, each with the file to keep and why.

    Exit codes: 0 done; 1 some files could not be moved (each one is listed and left
    where it was); 2 bad usage; 3 index locked; 4 storage failure; 5 over the query
    memory budget.
    """
    _check_flags(by, threshold, json_out, csv_out, tiers, keep, act_on, move_to, dry_run)
    chosen = filters(tag, source, prompt, camera, since, until, folder, fmt, model, kind)
    chosen = None if chosen.empty() else chosen
    api = open_api(db, config)
    report = None
    if move_to is not None:
        result, report = call(api.move_duplicates, move_to, dry_run=dry_run, by=by,
                              threshold=threshold, tiers=tiers, keep=keep, act_on=act_on,
                              device=device, filters=chosen)
    else:
        result = call(api.duplicates, by=by, threshold=threshold, device=device, keep=keep,
                      tiers=tiers, filters=chosen)
    if html is not None:
        from ..actions.report import write_html

        call(write_html, result, html)
    return _print(result, report, json_out, csv_out, html)


def _check_flags(by, threshold, json_out, csv_out, tiers, keep, act_on, move_to,
                 dry_run) -> None:
    """Every bad flag of ``duplicates`` is exit 2 before the index is opened."""
    problem = None if threshold is None else threshold_problem(by, threshold)
    if problem:
        raise typer.BadParameter(problem, param_hint="'--threshold'")
    if json_out and csv_out:
        raise typer.BadParameter("choose one of --json and --csv", param_hint="'--csv'")
    from ..search.queries import check_tiers

    if tiers is not None:
        call(check_tiers, tiers, "tier")
    if keep is not None:
        from ..search.keep import parse_keep

        call(parse_keep, keep)
    if act_on is not None:
        call(check_tiers, act_on, "--act-on tier")
    if dry_run and move_to is None:
        raise typer.BadParameter("--dry-run goes with --move-to DIR", param_hint="'--dry-run'")


def _print(result: Any, report: Any, json_out: bool, csv_out: bool, html: Path | None) -> int:
    """The answer as JSON, CSV or the terminal table (with the moves); the exit code."""
    code = EXIT_FAILED_FILES if report is not None and report.problems else EXIT_OK
    if json_out:
        doc = result.to_dict()
        if report is not None:
            doc["moves"] = report.to_dict()
        emit_json(doc)
        return code
    if csv_out:
        emit_csv(result)
        return code
    sys.stdout.write(duplicates_text(result))
    if report is not None:
        sys.stdout.write(moves_text(report))
    if html is not None:
        say(f"report: {show_path(str(html))}")
    return code


@app.command()
def undo(journal: Path = typer.Argument(..., metavar="JOURNAL", help="The journal a --move-to "
                                        "wrote (alice-gpu-journal-*.jsonl in its DIR)."),
         db: Optional[Path] = DB, json_out: bool = JSON, config: Optional[Path] = CONFIG) -> int:
    """Put back every file a `duplicates --move-to` moved, byte for byte; the index follows.

    The index is the one the journal names (--db, if given, must be that one). A file
    that now exists at an original path is never overwritten: it is listed and the exit
    code is 1.
    """
    if db is None:
        from ..api import journal_index

        db = call(journal_index, journal)
    report = call(open_api(db, config).undo, journal)
    code = EXIT_FAILED_FILES if report.problems else EXIT_OK
    if json_out:
        emit_json(report.to_dict())
        return code
    lines = [f"restored {report.restored} files from {show_path(str(journal))}"]
    lines += [f"not restored: {show_path(p['path'])}: {p['reason']}" for p in report.problems]
    sys.stdout.write("\n".join(lines) + "\n")
    return code


O_SIMILAR_BY = typer.Option("embedding", "--similar-by", **choice("--similar-by", QUERY_KINDS),
                            help="What similar ranks by.")
O_NO_INDEX = typer.Option(False, "--no-index", help="Do not index the CSV's files first.")
A_TRUTH = typer.Argument(..., metavar="GROUND_TRUTH.csv",
                         help="CSV with columns file,group (and transform, relation).")
O_ROOT = typer.Option(None, "--root", metavar="DIR",
                      help="Folder the CSV's relative paths start from (default: the CSV's).")


@app.command()
def evaluate(ground_truth: Path = A_TRUTH, by: str = O_BY,
             threshold: Optional[float] = O_THRESHOLD, similar_by: str = O_SIMILAR_BY,
             no_index: bool = O_NO_INDEX, root: Optional[Path] = O_ROOT,
             device: Optional[str] = DEVICE, runtime: Optional[str] = RUNTIME,
             db: Optional[Path] = DB, json_out: bool = JSON,
             config: Optional[Path] = CONFIG) -> int:
    """Score duplicates and similar against a ground truth, overall and per transform."""
    problem = None if threshold is None else threshold_problem(by, threshold)
    if problem:
        raise typer.BadParameter(problem, param_hint="'--threshold'")
    api = open_api(db, config, runtime=runtime)
    from ..pipeline import Interrupted

    try:
        result = call(api.evaluate, ground_truth, by=by, threshold=threshold,
                      similar_by=similar_by, device=device, index=not no_index, root=root)
    except Interrupted as stopped:
        from .commands import interrupted

        return interrupted(stopped.summary, json_out)
    if json_out:
        emit_json(result.to_dict())
        return EXIT_OK
    _evaluation_table(result)
    return EXIT_OK


def _evaluation_table(result: Any) -> None:
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
    console().print(table)
    rel = result.relations
    if rel:
        c, lk = rel["copies"], rel["lookalikes"]
        prov = Table(title="by provenance: copies (one capture) and look-alikes (another)")
        for col in ("relation", "pairs", "precision", "recall", "grouped as duplicates"):
            prov.add_column(col, justify="left" if col == "relation" else "right")
        prov.add_row("copy", str(c["true_pairs"]), f"{c['precision']:.3f}",
                     f"{c['recall']:.3f}", str(c["correct_pairs"]))
        prov.add_row("look-alike", str(lk["pairs"]), "-", "-", str(lk["called_duplicates"]))
        console().print(prov)
