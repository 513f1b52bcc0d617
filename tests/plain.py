"""What "free of terminal markup" means for the tests: an error people read in an API's JSON
or a custom resource's status has no ANSI escapes, no box drawing, no rich markup tags."""

from __future__ import annotations

import re
from typing import Any

_ESCAPE = re.compile(r"\x1b")
_BOX = re.compile(r"[\u2500-\u259f]")
_STYLES = ("bold|dim|italic|underline|blink|reverse|strike|red|green|yellow|blue|magenta|cyan"
           "|white|black|bright_\\w+|link|on \\w+")
# [bold], [bold red], [/bold], [/], [link=…]: rich's console markup.
_MARKUP = re.compile(rf"\[/\]|\[/?(?:{_STYLES})(?:[ =][^\]\[]*)?\]")
#: Fields of a JSON body or a status that carry an error meant for people.
ERROR_FIELDS = ("error", "traceback")


def markup_in(text: str) -> list[str]:
    """The kinds of terminal markup in ``text`` (empty if it is plain)."""
    found = []
    if _ESCAPE.search(text):
        found.append("an ANSI escape")
    if m := _BOX.search(text):
        found.append(f"box drawing {m.group()!r}")
    if m := _MARKUP.search(text):
        found.append(f"rich markup {m.group()!r}")
    return found


def assert_plain(text: str, what: str = "text") -> None:
    assert not (found := markup_in(text)), f"{what} has {', '.join(found)}:\n{text}"


def error_texts(body: Any, fields: tuple[str, ...] = ERROR_FIELDS, path: str = ""
                ) -> list[tuple[str, str]]:
    """(where, text) of every string under a key in ``fields``, anywhere in a JSON body
    (a run, a list of runs, an error body's ``fields[].message``)."""
    out: list[tuple[str, str]] = []
    if isinstance(body, dict):
        for key, value in body.items():
            where = f"{path}.{key}" if path else key
            if isinstance(value, str) and (key in fields or key == "message"):
                out.append((where, value))
            else:
                out += error_texts(value, fields, where)
    elif isinstance(body, list):
        for i, value in enumerate(body):
            out += error_texts(value, fields, f"{path}[{i}]")
    return out


def assert_plain_body(body: Any, what: str = "body") -> None:
    for where, text in error_texts(body):
        assert_plain(text, f"{what} {where}")
