"""What scripts rely on: the JSON documents' keys, the exit codes, and ranges checked by the parser."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

INDEX_KEYS = {"files_seen", "decoded", "unchanged", "failed", "removed", "seconds",
              "files_per_second", "embedded", "reused", "removals_held", "pending",
              "interrupted", "device", "workers", "batch_size", "run_id", "failed_files",
              "metrics",
              "driver_files", "skipped", "runtime", "space",   # added later: the document only grows
              "renamed", "deferred"}
METRIC_KEYS = {"files_processed", "processing_time", "average_file_time", "memory_usage_mb",
               "cache_hit_rate", "cache_hits", "batch_efficiency", "batches", "stage_seconds"}
STAGES = {"discover", "decode", "transfer", "compute", "write"}
SIMILAR_KEYS = {"query", "by", "query_in_index", "results"}
MATCH_KEYS = {"path", "score", "id", "distance",
              "kind", "at"}                                      # added later (issue 24)
DUPLICATES_KEYS = {"by", "threshold", "groups", "thresholds", "tiers",
                   "checks"}                                     # added later (issue 23)
MEMBER_KEYS = {"path", "id", "width", "height", "size", "tier", "score", "transform", "distance",
               "edit", "evidence"}                                # added later (issue 23)
STATS_KEYS = {"assets", "failed", "embedded", "bytes", "formats", "last_run", "failed_files", "db",
              "by_source", "by_year", "failures_by_reason", "index_bytes",   # added later
              "model", "space",
              "skipped", "videos"}                               # added later (issue 24)
LAST_RUN_KEYS = {"id", "finished_at", "files_seen", "decoded", "unchanged", "failed", "removed",
                 "seconds"}


@pytest.fixture(scope="module")
def index(tmp_path_factory, photos):
    """Six photos, one of them twice, and a broken file, indexed hash-only."""
    root = tmp_path_factory.mktemp("contract")
    media = root / "media"
    media.mkdir()
    srcs = sorted((photos / "images").iterdir())[:6]
    for src in srcs:
        shutil.copy2(src, media / src.name)
    shutil.copy2(srcs[0], media / "copy.jpg")
    (media / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    code, out, err = run_cli("index", media, "--db", root / "db", "--no-embed", "--json")
    return media, root / "db", code, json.loads(out)


def test_index_document_and_exit_code_1_when_files_failed(index):
    _, _, code, doc = index
    assert code == 1 and doc["failed"] == 1
    assert set(doc) == INDEX_KEYS
    assert set(doc["metrics"]) == METRIC_KEYS and set(doc["metrics"]["stage_seconds"]) == STAGES
    assert set(doc["failed_files"][0]) == {"path", "error"}


def test_similar_duplicates_and_stats_documents(index):
    media, db, _, _ = index
    code, out, _ = run_cli("similar", media / "copy.jpg", "--db", db, "--by", "phash", "--json")
    doc = json.loads(out)
    assert code == 0 and set(doc) == SIMILAR_KEYS and set(doc["results"][0]) == MATCH_KEYS
    code, out, _ = run_cli("duplicates", "--db", db, "--json")
    doc = json.loads(out)
    assert code == 0 and set(doc) == DUPLICATES_KEYS and doc["threshold"] == 8
    assert doc["by"] == "tiered" and doc["tiers"] == ["exact", "near", "edited"]
    group = doc["groups"][0]                # "files" as before; the rest extends it
    assert set(group) == {"files", "keeper", "keeper_reason", "weakest", "tier", "score",
                          "transform"}
    assert group["tier"] == "exact" and group["score"] == 1.0 and group["transform"] == []
    assert set(group["files"][0]) == MEMBER_KEYS
    assert set(group["weakest"]) == {"a", "b", "score", "distance", "tier"}
    assert group["keeper"] in {f["path"] for f in group["files"]}
    code, out, _ = run_cli("duplicates", "--db", db, "--by", "phash", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["threshold"] == 10 and doc["groups"][0]["tier"] == "near"
    for group in doc["groups"]:
        assert group["keeper"] in {f["path"] for f in group["files"]}
    code, out, _ = run_cli("stats", "--db", db, "--json")
    doc = json.loads(out)
    assert code == 0 and set(doc) == STATS_KEYS and set(doc["last_run"]) == LAST_RUN_KEYS


@pytest.mark.parametrize("args, says", [
    (["similar", "{q}", "--k", "0"], "--k"),
    (["similar", "{q}", "--by", "md5"], "unknown --by 'md5'"),
    (["similar", "{q}", "--device", "tpu"], "unknown device 'tpu'"),
    (["duplicates", "--threshold", "1000"], "0..64"),
    (["duplicates", "--threshold", "-1"], "0..64"),
    (["duplicates", "--threshold", "2.5"], "whole number of bits"),
    (["duplicates", "--by", "embedding", "--threshold", "1.5"], "-1..1"),
    (["index", "{m}", "--batch-size", "0"], "--batch-size"),
    (["index", "{m}", "--workers", "0"], "--workers"),
    (["index", "{m}", "--profile", "turbo"], "unknown profile 'turbo'"),
    (["index", "{m}", "--progress", "loud"], "unknown --progress"),
    (["frobnicate"], "No such command"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_out_of_range_values_are_usage_errors(index, args, says):
    """Refused by the parser, exit 2, before the index is opened (FAISS is never asked
    for all n² pairs of a threshold of 1000)."""
    media, db, _, _ = index
    args = [a.format(q=media / "copy.jpg", m=media) for a in args]
    code, out, err = run_cli(*args, "--db", db) if args[0] != "frobnicate" else run_cli(*args)
    assert code == 2, (out, err)
    assert says in err and "Traceback" not in err


def test_ranges_that_are_fine_pass_the_parser(index):
    _, db, _, _ = index
    for args in (["--threshold", "0"], ["--threshold", "64"],
                 ["--by", "embedding", "--threshold", "-1"],
                 ["--by", "embedding", "--threshold", "0.9"]):
        code, out, err = run_cli("duplicates", *args, "--db", db, "--json")
        assert code == 0, (args, err)


def test_help_and_completion_follow_the_conventions(monkeypatch):
    import typer.completion

    # --show-completion detects the user's shell from the parent processes; a test run
    # detached from any shell (CI, nohup) has none, so the shell is given here
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    code, out, _ = run_cli("--help")
    assert code == 0 and all(c in out for c in ("index", "similar", "duplicates", "stats"))
    code, out, _ = run_cli("index", "-h")
    assert code == 0 and "--no-embed" in out and "--progress" in out
    code, out, _ = run_cli("--show-completion")
    assert code == 0 and "complete" in out
    code, _, _ = run_cli()
    assert code == 2                   # no command: the help, and a usage exit code


def test_progress_jsonl_events(tmp_path, photos):
    media = tmp_path / "m"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[:3]:
        shutil.copy2(src, media / src.name)
    code, _, err = run_cli("index", media, "--db", tmp_path / "db", "--no-embed",
                           "--progress", "jsonl")
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert code == 0 and events[0]["stage"] == "discover" and events[0]["total"] == 3
    assert {"event", "stage", "done", "total", "failed", "committed"} == set(events[-1])
    assert (events[-1]["done"], events[-1]["committed"]) == (3, 3)
