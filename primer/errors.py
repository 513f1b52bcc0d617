"""Errors as people read them in a run's record: one short line, and a plain traceback beside it.

Every door that records why a run failed (a unit's failure record, the gateway's run, the
operator's custom-resource status) writes :func:`short_error` as the message and
:func:`plain_traceback` separately. Both are plain text: a message may carry what a terminal
renders (a tool's coloured output, a rich panel's box drawing), and an API's JSON or
``kubectl get -o yaml`` shows those as escape codes and line art, so :func:`plain` drops them.
"""

from __future__ import annotations

import re
import traceback

#: Characters kept in a run's one-line message; the whole text stays in its traceback.
MESSAGE_LIMIT = 400
#: Characters kept of a traceback: its end, where the exception is (a CR's status is small).
TRACEBACK_LIMIT = 16_000

# ANSI escape sequences: CSI (colours, cursor), OSC (titles, hyperlinks), two-byte escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # all but tab and newline
_BOX = re.compile(r"[\u2500-\u259f]+")  # box drawing and block elements (panels, bars)


def plain(text: str) -> str:
    """``text`` without terminal markup: escape sequences, control characters and box
    drawing go; a line that was only a frame (``╭────╮``) goes with them."""
    text = _CONTROL.sub("", _ANSI.sub("", text.replace("\r\n", "\n")))
    lines = []
    for line in text.split("\n"):
        if _BOX.search(line):
            line = _BOX.sub(" ", line).strip()
            if not line:
                continue
        lines.append(line.rstrip())
    return "\n".join(lines)


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """The first non-empty line of ``plain(text)``, cut to ``limit`` characters."""
    line = next((ln.strip() for ln in plain(text).split("\n") if ln.strip()), "")
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


def short_error(exc: BaseException) -> str:
    """``"ValueError: count must be > 0"``: the exception's type and the first line of its
    message (the rest of a long message is in :func:`plain_traceback`)."""
    name = type(exc).__name__
    first = one_line(str(exc), MESSAGE_LIMIT - len(name) - 2)
    return f"{name}: {first}" if first else name


def plain_traceback(exc: BaseException, limit: int = TRACEBACK_LIMIT) -> str:
    """The traceback of ``exc`` (its causes included) as Python prints it, in plain text;
    a long one keeps its end."""
    text = plain("".join(traceback.format_exception(exc))).rstrip("\n")
    return clip(text, limit)


def clip(text: str, limit: int = TRACEBACK_LIMIT) -> str:
    """``text``'s last ``limit`` characters, starting at a line, with a note of the cut."""
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    tail = tail[tail.find("\n") + 1:] if "\n" in tail else tail
    return f"... ({len(text) - len(tail)} characters of the traceback cut)\n{tail}"
