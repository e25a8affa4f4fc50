"""Search, keep: which file of a duplicate group is the keeper, by an ordered list of rules.

``--keep pixels,format:png>heif>jpeg,size,oldest,path:~/Originals``: the first
rule that tells two files apart decides; the path decides last, so the choice is
the same on every run. Each rule also says, in words, why the keeper won.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import QueryError

DEFAULT_KEEP = "pixels,size,oldest"
RULES = ("pixels", "size", "oldest", "newest", "format:A>B>...", "path:FOLDER")
# the names Pillow stores for a format, by the names people type
_FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "heic": "heif", "hif": "heif", "tif": "tiff"}


@dataclass(frozen=True)
class Rule:
    name: str
    key: Callable[[dict], Any]                       # lower is better
    why: Callable[[dict, dict], str]                 # (keeper, runner-up) -> reason


def _pixels(row: dict) -> int:
    return (row.get("width") or 0) * (row.get("height") or 0)


def _format_rule(spec: str) -> Rule:
    order = [_FORMAT_ALIASES.get(f.strip().lower(), f.strip().lower()) for f in spec.split(">")]
    if not all(order):
        raise QueryError(f"--keep format:{spec}: empty format name (write format:png>jpeg)")

    def key(row: dict) -> int:
        fmt = (row.get("format") or "").lower()
        return order.index(fmt) if fmt in order else len(order)

    return Rule(f"format:{spec}", key,
                lambda k, r: f"preferred format ({k.get('format')} before {r.get('format')})")


def _path_rule(folder: str) -> Rule:
    root = os.path.abspath(os.path.expanduser(folder)).rstrip(os.sep) + os.sep
    return Rule(f"path:{folder}", lambda row: not row["path"].startswith(root),
                lambda k, r: f"under {folder}")


def parse_keep(spec: str | None) -> list[Rule]:
    """The rules of a ``--keep`` value; an unknown rule is a one-line error (exit 2)."""
    rules = []
    for item in (spec or DEFAULT_KEEP).split(","):
        item = item.strip()
        if item == "pixels":
            rules.append(Rule("pixels", lambda row: -_pixels(row), lambda k, r: (
                f"most pixels ({k['width']}x{k['height']} against {r['width']}x{r['height']})")))
        elif item == "size":
            rules.append(Rule("size", lambda row: -row["size"], lambda k, r: (
                f"largest file ({k['size']} against {r['size']} bytes)")))
        elif item in ("oldest", "newest"):
            sign = 1 if item == "oldest" else -1
            rules.append(Rule(item, lambda row, s=sign: s * row["mtime_ns"],
                              lambda k, r, w=item: f"{w} (modified {'first' if w == 'oldest' else 'last'})"))
        elif item.startswith("format:"):
            rules.append(_format_rule(item[len("format:"):]))
        elif item.startswith("path:") and len(item) > len("path:"):
            rules.append(_path_rule(item[len("path:"):]))
        else:
            raise QueryError(f"unknown --keep rule {item!r} (rules: {', '.join(RULES)}, "
                             f"comma-separated, first decides)")
    return rules


def chosen_first(chosen: set[int], rules: list[Rule]) -> list[Rule]:
    """The keep rules, after the keepers a person chose by hand (which win first)."""
    if not chosen:
        return rules
    return [Rule("chosen", lambda row: row["id"] not in chosen, lambda k, r: "chosen by hand"),
            *rules]


def keeper_key(rules: list[Rule]) -> Callable[[dict], tuple]:
    """A sort key over asset rows: the best keeper sorts first; the path breaks ties."""
    return lambda row: (*(rule.key(row) for rule in rules), row["path"])


def keeper_reason(rules: list[Rule], keeper: dict, runner_up: dict) -> str:
    for rule in rules:
        if rule.key(keeper) != rule.key(runner_up):
            return rule.why(keeper, runner_up)
    return "first by path (the rules found no difference)"
