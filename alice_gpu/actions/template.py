"""Actions, templates: where ``organize`` puts a file, from what the index knows of it.

A template is a relative path whose parts hold fields, ``{taken:%Y}/{camera}/{name}``.
A field may list fallbacks, the first non-empty wins: ``{camera|source|"unknown"}``;
a field with none that is empty becomes ``unknown``. A template is checked when it
is read (no absolute part, no ``.`` or ``..`` part, known fields only) and each
value when it is used: a value holding a path separator, NUL, a control character,
or that is ``.`` or ``..``, stops the whole plan before anything moves. So nothing
a file's metadata says can place a file outside the destination.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from ..errors import QueryError

PRESETS = {
    "date": "{taken:%Y}/{taken:%Y-%m-%d}/{name}",
    # AliceMultiverse's layout: organized/YYYY-MM-DD/<project>/<source>/
    "alice": '{taken:%Y-%m-%d}/{project|"default"}/{source|camera|"unknown"}/{name}',
}
DEFAULT = "date"
UNKNOWN = "unknown"
MAX_VALUE = 120          # characters of one field value (a long prompt-like model name)

FIELDS = ("taken", "camera", "source", "model", "project", "kind", "format", "tags", "hash",
          "name", "stem", "ext", "date_from")
_FIELD = re.compile(r"\{([^{}]*)\}")
_BAD_VALUE = re.compile(r"[/\\\x00-\x1f\x7f]")


class TemplateError(QueryError):
    """A template (or a value it would use) that could put a file outside the destination."""


@dataclass(frozen=True)
class Choice:
    """One alternative of a field: a field name with its format spec, or a literal."""

    name: str | None
    spec: str
    literal: str | None


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple[tuple[str | tuple[Choice, ...], ...], ...]   # per folder: text and fields

    def render(self, facts: dict[str, Any], what: str) -> str:
        """The relative path for a file with these ``facts``; TemplateError naming ``what``
        (the file) when a value would change the path's shape."""
        out = []
        for part in self.parts:
            text = "".join(p if isinstance(p, str) else _value(p, facts, what, self.text)
                           for p in part)
            if text in ("", ".", ".."):
                raise TemplateError(f"the template {self.text!r} gives {what} a folder named "
                                    f"{text!r}; nothing was moved")
            out.append(text)
        return os.path.join(*out)


def _choices(body: str, template: str) -> tuple[Choice, ...]:
    out = []
    for alt in body.split("|"):
        alt = alt.strip()
        if len(alt) >= 2 and alt[0] == alt[-1] == '"':
            literal = alt[1:-1]
            if _BAD_VALUE.search(literal) or literal in (".", ".."):
                raise TemplateError(f"template {template!r}: the literal {alt} could change "
                                    f"the path's shape")
            out.append(Choice(None, "", literal))
            continue
        name, _, spec = alt.partition(":")
        if name not in FIELDS:
            raise TemplateError(f"template {template!r}: unknown field {name!r} (fields: "
                                f"{', '.join(FIELDS)})")
        out.append(Choice(name, spec, None))
    return tuple(out)


def parse(text: str | None) -> Template:
    """A preset's name or a template's text, checked; TemplateError (one line) if not."""
    text = PRESETS.get(text or DEFAULT, text or "")
    if not text.strip():
        raise TemplateError("an empty template")
    if text.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", text):
        raise TemplateError(f"template {text!r} is absolute; it must be a path inside --to")
    parts = []
    for raw in text.split("/"):
        if "\\" in _FIELD.sub("", raw) or "\x00" in raw:
            raise TemplateError(f"template {text!r} holds a backslash or NUL outside a field")
        if raw in ("", ".", ".."):
            raise TemplateError(f"template {text!r} has a part {raw!r}: every part must name "
                                f"a folder or the file inside --to")
        pieces: list[str | tuple[Choice, ...]] = []
        pos = 0
        for m in _FIELD.finditer(raw):
            pieces += [raw[pos:m.start()], _choices(m.group(1), text)]
            pos = m.end()
        rest = raw[pos:]
        if "{" in rest or "}" in rest or any("{" in p or "}" in p for p in pieces
                                              if isinstance(p, str)):
            raise TemplateError(f"template {text!r} has an unbalanced brace in {raw!r}")
        pieces.append(rest)
        parts.append(tuple(p for p in pieces if p != ""))
    last = text.split("/")[-1]
    if not any(f in last for f in ("{name", "{stem", "|name", "|stem")):
        raise TemplateError(f"template {text!r}: its last part must name the file "
                            f"({{name}}, or {{stem}}{{ext}})")
    return Template(text, tuple(parts))


def _formatted(choice: Choice, value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime(choice.spec or "%Y-%m-%d")
    if choice.name == "hash":
        return str(value)[:int(choice.spec)] if choice.spec.isdigit() else str(value)[:8]
    return str(value)


def _value(choices: tuple[Choice, ...], facts: dict[str, Any], what: str, template: str) -> str:
    for choice in choices:
        if choice.literal is not None:
            return choice.literal
        value = facts.get(choice.name)
        if value is None:
            continue
        text = _formatted(choice, value)
        if choice.name not in ("name", "stem", "ext"):
            text = text.strip()[:MAX_VALUE].strip()
        if not text:
            continue
        if choice.name not in ("name", "stem", "ext") and (
                _BAD_VALUE.search(text) or text in (".", "..")):
            raise TemplateError(f"{{{choice.name}}} of {what} is {text!r}, which could change "
                                f"the path's shape; refused ({template!r}), nothing was moved")
        return text
    return UNKNOWN


def checker(dest: str) -> Callable[[str], bool]:
    """Whether a rendered path stays inside ``dest`` (a last check on the joined path)."""
    root = os.path.abspath(dest).rstrip(os.sep) + os.sep

    def inside(path: str) -> bool:
        return os.path.normpath(path).startswith(root)

    return inside
