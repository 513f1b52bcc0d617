"""A run's error as people read it: one plain line, and a plain traceback beside it."""

from __future__ import annotations

import io

from rich.console import Console

from primer.errors import MESSAGE_LIMIT, clip, plain, plain_traceback, short_error
from primer.executor import Job, LocalExecutor, WorkUnit
from primer.executor.plan import Planner, Step, reconcile
from tests.plain import assert_plain, markup_in

#: What a unit that wraps a tool's coloured, boxed output raises.
LOUD = ("\x1b[31mdisk full\x1b[0m on /data\nwhile writing shard 3\n"
        "╭── details ──╮\n│ quota 10 GB │\n╰─────────────╯")


def loud(**_):
    raise RuntimeError(LOUD)


def caught(fn) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def test_the_message_is_the_first_line_without_markup_and_the_rest_is_in_the_traceback():
    exc = caught(loud)
    assert markup_in(str(exc))  # the raw message is what the issue saw
    assert short_error(exc) == "RuntimeError: disk full on /data"
    trace = plain_traceback(exc)
    assert_plain(trace)
    assert trace.startswith("Traceback (most recent call last)")
    assert "in loud" in trace and "while writing shard 3" in trace and "quota 10 GB" in trace
    assert "╭" not in trace and "\x1b" not in trace


def test_a_long_message_is_cut_to_one_short_line():
    exc = caught(lambda: (_ for _ in ()).throw(ValueError("x" * 5000)))
    short = short_error(exc)
    assert len(short) == MESSAGE_LIMIT and short.startswith("ValueError: xxx")
    assert short.endswith("…")
    assert "x" * 5000 in plain_traceback(exc)  # nothing is lost
    assert short_error(KeyError()) == "KeyError"


def test_a_chained_error_keeps_both_tracebacks_and_a_long_one_keeps_its_end():
    def wrapped():
        try:
            {}["missing"]
        except KeyError as e:
            raise RuntimeError("lookup failed") from e

    trace = plain_traceback(caught(wrapped))
    assert "KeyError: 'missing'" in trace and trace.endswith("RuntimeError: lookup failed")
    assert "direct cause" in trace
    long = "\n".join(f"line {i}" for i in range(5000))
    cut = clip(long, 1000)
    assert len(cut) <= 1100 and cut.endswith("line 4999")
    assert cut.splitlines()[0].startswith("... (") and "characters of the traceback cut" in cut


def test_a_rich_rendered_traceback_becomes_plain_text():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=80)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        console.print_exception()
    rendered = out.getvalue()
    assert len(markup_in(rendered)) >= 2  # escapes and box drawing, as the issue reports
    text = plain(rendered)
    assert_plain(text)
    assert "ZeroDivisionError: division by zero" in text


class _OneUnit(Planner):
    """A planner whose one step is a unit that raises :data:`LOUD`."""

    kind = "test-errors"

    def __init__(self, state_uri: str):
        self.job = Job("explode", [WorkUnit("u-0", "tests.primer.test_errors:loud")], state_uri)

    def resolve(self, spec):
        return spec

    def next(self, config, markers=None):
        return Step(self.job, "explode")

    def output(self, config):
        return self.job.state_uri


def test_a_failed_unit_fails_the_tick_with_one_line_and_a_plain_traceback(tmp_path):
    """The failure record a worker writes, read back by the async doors' reconcile()."""
    plan = _OneUnit(str(tmp_path / "state"))
    result = LocalExecutor(workers=1).run(plan.job, progress=False)
    assert result.failed[0].error == "RuntimeError: disk full on /data"
    tick = reconcile(plan, None, "explode", send=lambda job: 0)
    assert tick.phase == "Failed"
    assert tick.error == ("RuntimeError: disk full on /data "
                          "(unit u-0 of step explode; 1 unit(s) failed)")
    assert "\n" not in tick.error
    assert_plain(tick.traceback)
    assert "Traceback (most recent call last)" in tick.traceback
    assert "in loud" in tick.traceback and "while writing shard 3" in tick.traceback
