"""`iterate`: every sentence of SPEC.md's contract, plus a model-based property test.

The dispatcher under test is a real backend (poll) behind a thin recorder that logs the
arguments of each dispatch_once call, so the order of callbacks and dispatches is visible.

Each test runs twice: on `iterate` itself, whose loop is written out inline for speed,
and on the same loop built from the steps the foreign-loop hosts use
(`prepare_dispatchvars`, `begin_round`, `end_round`), so the two forms cannot drift
apart.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Iterator, MutableMapping
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asycamore
from asycamore import Events, IDispatchContext, iterate
from asycamore.dispatcher import begin_round, end_round, prepare_dispatchvars


class Recorder:
    """A real poll context whose dispatch_once calls are logged in a shared journal."""

    def __init__(self, journal: list[tuple[Any, ...]]) -> None:
        self.inner = asycamore.create_dispatcher("poll")
        self.name = self.inner.name
        self.journal = journal

    def dispatch_once(self, timeout: float | None = None, error_in_handler: Any = None) -> int:
        self.journal.append(("dispatch", timeout, error_in_handler))
        return self.inner.dispatch_once(timeout, error_in_handler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def iterate_in_steps(
    dispatcher: IDispatchContext,
    timeout: float | None = 30.0,
    count: int = -1,
    dispatchvars: MutableMapping[str, Any] | None = None,
    before_dispatch: Any = None,
    after_dispatch: Any = None,
    error_in_handler: Any = None,
) -> None:
    """`iterate` as asycamore.aio and asycamore.tk run it, without their waiting."""
    dispatchvars = prepare_dispatchvars(
        dispatchvars, timeout, count, before_dispatch, after_dispatch, error_in_handler
    )
    while begin_round(dispatcher, dispatchvars):
        dispatcher.dispatch_once(dispatchvars["timeout"], dispatchvars["error_in_handler"])
        if not end_round(dispatcher, dispatchvars):
            return


LOOPS = [pytest.param(iterate, id="inline"), pytest.param(iterate_in_steps, id="steps")]


@pytest.fixture
def journal() -> list[tuple[Any, ...]]:
    return []


@pytest.fixture
def recorder(journal: list[tuple[Any, ...]]) -> Iterator[Recorder]:
    rec = Recorder(journal)
    yield rec
    rec.inner.close()


def logging_callback(journal: list[tuple[Any, ...]], label: str) -> Any:
    def callback(dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]) -> None:
        journal.append((label, dispatchvars["count"]))

    return callback


@pytest.mark.parametrize("loop", LOOPS)
def test_count_n_dispatches_n_times_with_callbacks_around_each(loop, recorder, journal):
    loop(
        recorder,
        timeout=0,
        count=2,
        before_dispatch=logging_callback(journal, "before"),
        after_dispatch=logging_callback(journal, "after"),
    )
    assert journal == [
        ("before", 2),
        ("dispatch", 0, None),
        ("after", 1),
        ("before", 1),
        ("dispatch", 0, None),
        ("after", 0),
        ("before", 0),  # count is checked right after before_dispatch
    ]


@pytest.mark.parametrize("loop", LOOPS)
def test_count_zero_runs_before_dispatch_once_and_never_dispatches(loop, recorder, journal):
    loop(
        recorder,
        count=0,
        before_dispatch=logging_callback(journal, "before"),
        after_dispatch=logging_callback(journal, "after"),
    )
    assert journal == [("before", 0)]


@pytest.mark.parametrize("loop", LOOPS)
def test_before_dispatch_can_end_the_loop_by_setting_count_zero(loop, recorder, journal):
    def before(dispatcher, dispatchvars):
        journal.append(("before",))
        dispatchvars["count"] = 0

    loop(recorder, timeout=0, count=-1, before_dispatch=before)
    assert journal == [("before",)]


@pytest.mark.parametrize("loop", LOOPS)
def test_dispatchvars_is_the_callers_dict_mutated_in_place(loop, recorder):
    sentinel = object()
    handler = lambda target, exc: None  # noqa: E731
    dispatchvars: dict[str, Any] = {"mine": sentinel}
    seen = []

    def before(dispatcher, dv):
        seen.append(dv)

    loop(
        recorder,
        timeout=0.0,
        count=1,
        dispatchvars=dispatchvars,
        before_dispatch=before,
        error_in_handler=handler,
    )
    assert all(dv is dispatchvars for dv in seen)
    assert dispatchvars["mine"] is sentinel
    assert dispatchvars["before_dispatch"] is before
    assert dispatchvars["after_dispatch"] is None
    assert dispatchvars["count"] == 0
    assert dispatchvars["timeout"] == 0.0
    assert dispatchvars["error_in_handler"] is handler


@pytest.mark.parametrize("loop", LOOPS)
def test_a_new_dict_is_used_when_dispatchvars_is_none(loop, recorder):
    seen: list[MutableMapping[str, Any]] = []
    loop(recorder, timeout=0, count=1, before_dispatch=lambda d, dv: seen.append(dv))
    assert isinstance(seen[0], dict)
    assert seen[0]["count"] == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_timeout_and_error_in_handler_are_reread_and_passed_positionally(loop, recorder, journal):
    handler_a = lambda target, exc: None  # noqa: E731
    handler_b = lambda target, exc: None  # noqa: E731

    def after(dispatcher, dispatchvars):
        dispatchvars["timeout"] = 0.001
        dispatchvars["error_in_handler"] = handler_b

    loop(recorder, timeout=0, count=2, after_dispatch=after, error_in_handler=handler_a)
    assert journal == [("dispatch", 0, handler_a), ("dispatch", 0.001, handler_b)]


@pytest.mark.parametrize("loop", LOOPS)
def test_dispatch_once_receives_positional_arguments(loop, journal):
    class PositionalOnly(Recorder):
        def dispatch_once(self, timeout=None, error_in_handler=None, /):  # type: ignore[override]
            return super().dispatch_once(timeout, error_in_handler)

    rec = PositionalOnly(journal)
    try:
        loop(rec, timeout=0, count=1)
    finally:
        rec.inner.close()
    assert journal == [("dispatch", 0, None)]


@pytest.mark.parametrize("loop", LOOPS)
def test_callbacks_can_replace_and_disable_each_other(loop, recorder, journal):
    def second_before(dispatcher, dispatchvars):
        journal.append(("second_before",))
        dispatchvars["before_dispatch"] = None

    def first_before(dispatcher, dispatchvars):
        journal.append(("first_before",))
        dispatchvars["before_dispatch"] = second_before
        dispatchvars["after_dispatch"] = None

    loop(
        recorder,
        timeout=0,
        count=3,
        before_dispatch=first_before,
        after_dispatch=logging_callback(journal, "after"),
    )
    assert [entry[0] for entry in journal] == [
        "first_before",
        "dispatch",
        "second_before",
        "dispatch",
        "dispatch",
    ]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_deleted_callback_key_reads_as_none(loop, recorder, journal):
    # iterate reads the callbacks by subscript for speed; a missing key is still None.
    def before(dispatcher, dispatchvars):
        journal.append(("before",))
        del dispatchvars["before_dispatch"], dispatchvars["after_dispatch"]

    loop(
        recorder,
        timeout=0,
        count=2,
        before_dispatch=before,
        after_dispatch=logging_callback(journal, "after"),
    )
    assert [entry[0] for entry in journal] == ["before", "dispatch", "dispatch"]


@pytest.mark.parametrize("loop", LOOPS)
def test_setting_count_in_a_callback_ends_after_that_many_dispatches(loop, recorder, journal):
    def after(dispatcher, dispatchvars):
        if len([e for e in journal if e[0] == "dispatch"]) == 5:
            dispatchvars["count"] = 2

    loop(recorder, timeout=0, count=-1, after_dispatch=after)
    assert len([e for e in journal if e[0] == "dispatch"]) == 7


@pytest.mark.parametrize("loop", LOOPS)
def test_negative_count_loops_until_stopped_and_is_not_decremented(loop, recorder):
    counts = []

    def after(dispatcher, dispatchvars):
        counts.append(dispatchvars["count"])
        if len(counts) == 50:
            raise StopIteration

    loop(recorder, timeout=0, count=-3, after_dispatch=after)
    assert counts == [-3] * 50


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("which", ["before_dispatch", "after_dispatch"])
def test_stopiteration_from_a_callback_ends_the_loop_at_once(loop, recorder, journal, which):
    def stop(dispatcher, dispatchvars):
        journal.append(("stop",))
        raise StopIteration

    result = loop(recorder, timeout=0, count=5, **{which: stop})
    assert result is None
    expected = [("stop",)] if which == "before_dispatch" else [("dispatch", 0, None), ("stop",)]
    assert journal == expected


@pytest.mark.parametrize("loop", LOOPS)
def test_other_exceptions_from_callbacks_propagate(loop, recorder):
    def fail(dispatcher, dispatchvars):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        loop(recorder, timeout=0, count=5, after_dispatch=fail)


@pytest.mark.parametrize("loop", LOOPS)
def test_stopiteration_from_dispatch_once_is_not_a_stop_signal(loop, recorder):
    # Only the callbacks' StopIteration ends the loop normally; an error_in_handler that
    # raises it makes dispatch_once raise, which is an ordinary exception.
    a, b = socket.socketpair()

    class Failing:
        def fileno(self):
            return a.fileno()

        def handle_read_event(self):
            raise ValueError("boom")

        def handle_write_event(self):
            pass

    def error_in_handler(target, exc):
        raise StopIteration

    recorder.inner.register(Failing(), Events.READ)
    b.send(b"x")
    try:
        with pytest.raises(StopIteration):
            loop(recorder, timeout=1, count=3, error_in_handler=error_in_handler)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_keyboard_interrupt_from_a_callback_propagates(loop, recorder):
    def interrupt(dispatcher, dispatchvars):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop(recorder, timeout=0, before_dispatch=interrupt)


class _Two(enum.IntEnum):
    TWO = 2


def _bounded(rounds: list[int]) -> Any:
    """A before_dispatch that stops a loop which would otherwise run forever."""

    def before(dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]) -> None:
        rounds.append(dispatchvars["count"])
        if len(rounds) > 20:
            raise AssertionError(f"still looping: count is {dispatchvars['count']!r}")

    return before


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    "count", [1.5, 0.5, 2.0, float("nan"), float("inf"), True, False, "3", None, Fraction(2)]
)
def test_a_count_that_is_not_an_int_is_refused(loop, recorder, journal, count):
    """count=1.5 used to loop forever (1.5, 0.5, -0.5: never 0, never negative enough to
    stop being decremented); a bool is refused too (True is no count anyone means).  The
    call fails before anything runs or is stored."""
    rounds: list[int] = []
    dispatchvars: dict[str, Any] = {}
    with pytest.raises(TypeError, match="count"):
        loop(recorder, timeout=0, count=count, dispatchvars=dispatchvars,
                before_dispatch=_bounded(rounds))  # fmt: skip
    assert rounds == []
    assert journal == []
    assert dispatchvars == {}


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("count", [1.5, float("nan"), True, "1"])
def test_a_count_a_callback_sets_is_checked_each_round(loop, recorder, journal, count):
    """The count re-read each round is checked the same way: the loop stops with
    TypeError at the round that reads it, after the dispatches already made."""
    rounds: list[int] = []

    def after(dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]) -> None:
        dispatchvars["count"] = count

    with pytest.raises(TypeError, match="count"):
        loop(recorder, timeout=0, count=-1, before_dispatch=_bounded(rounds),
                after_dispatch=after)  # fmt: skip
    assert len([entry for entry in journal if entry[0] == "dispatch"]) == 1
    assert len(rounds) == 2


@pytest.mark.parametrize("loop", LOOPS)
def test_integers_of_any_kind_and_sign_stay_valid(loop, recorder, journal):
    """An int subclass (an IntEnum) counts as its value; negative counts loop until
    stopped, as before."""
    loop(recorder, timeout=0, count=_Two.TWO)
    assert len(journal) == 2
    rounds: list[int] = []

    def stop(dispatcher: IDispatchContext, dispatchvars: MutableMapping[str, Any]) -> None:
        if len(rounds) == 5:
            raise StopIteration
        rounds.append(dispatchvars["count"])

    loop(recorder, timeout=0, count=-(2**70), after_dispatch=stop)
    assert rounds == [-(2**70)] * 5


@pytest.mark.parametrize("loop", LOOPS)
def test_iterate_serves_real_targets(loop, journal):
    """End to end on the default backend: a reader target fed by its peer."""
    a, b = socket.socketpair()
    received = bytearray()

    class Reader:
        def fileno(self):
            return a.fileno()

        def handle_read_event(self):
            received.extend(a.recv(4096))

        def handle_write_event(self):
            pass

    def after(dispatcher, dispatchvars):
        if received == b"hello":
            raise StopIteration

    with asycamore.create_dispatcher() as dispatcher:
        dispatcher.register(Reader())
        b.send(b"hello")
        loop(dispatcher, timeout=5, count=10, after_dispatch=after)
    a.close()
    b.close()
    assert received == b"hello"


# -- a model of iterate, and random callback programs run against both -------------------

# A program is a list of actions, one per callback invocation, taken in order; when it runs
# out the callbacks do nothing.  Each action mutates dispatchvars the same way in the
# model and in the real loop.
ACTIONS = st.sampled_from(
    [
        ("nothing",),
        ("set_count", 0),
        ("set_count", 1),
        ("set_count", 3),
        ("set_count", -1),
        ("set_timeout", 0),
        ("set_timeout", 0.001),
        ("disable", "before_dispatch"),
        ("disable", "after_dispatch"),
        ("swap", "before_dispatch"),
        ("swap", "after_dispatch"),
        ("stop",),
    ]
)

# A program that never stops the loop (negative count, say) is cut off after this many
# dispatches, by the model and by the recorder alike, so every example ends.
MAX_ROUNDS = 60


class RoundLimitReached(Exception):
    pass


def _apply(action: tuple[Any, ...], dispatchvars: MutableMapping[str, Any], spare: Any) -> None:
    kind = action[0]
    if kind == "set_count":
        dispatchvars["count"] = action[1]
    elif kind == "set_timeout":
        dispatchvars["timeout"] = action[1]
    elif kind == "disable":
        dispatchvars[action[1]] = None
    elif kind == "swap":
        dispatchvars[action[1]] = spare[action[1]]
    elif kind == "stop":
        raise StopIteration


def model_iterate(
    program: list[tuple[Any, ...]], count: int, use_before: bool, use_after: bool
) -> list[tuple[Any, ...]]:
    """The contract, restated as plainly as possible; returns the event journal."""
    events: list[tuple[Any, ...]] = []
    steps = iter(program)
    state: dict[str, Any] = {
        "before_dispatch": "before" if use_before else None,
        "after_dispatch": "after" if use_after else None,
        "count": count,
        "timeout": 0,
    }
    spare = {"before_dispatch": "before2", "after_dispatch": "after2"}
    dispatches = 0
    while True:
        if state["before_dispatch"] is not None:
            events.append((state["before_dispatch"], state["count"]))
            try:
                _apply(next(steps, ("nothing",)), state, spare)
            except StopIteration:
                return events
        if state["count"] == 0:
            return events
        if dispatches == MAX_ROUNDS:
            events.append(("bound",))
            return events
        events.append(("dispatch", state["timeout"]))
        dispatches += 1
        if state["count"] > 0:
            state["count"] -= 1
        if state["after_dispatch"] is not None:
            events.append((state["after_dispatch"], state["count"]))
            try:
                _apply(next(steps, ("nothing",)), state, spare)
            except StopIteration:
                return events


@pytest.mark.parametrize("loop", LOOPS)
@settings(max_examples=150, deadline=None)
@given(
    program=st.lists(ACTIONS, max_size=20),
    count=st.integers(min_value=-2, max_value=6),
    use_before=st.booleans(),
    use_after=st.booleans(),
)
def test_iterate_matches_the_model(loop, program, count, use_before, use_after):
    expected = model_iterate(program, count, use_before, use_after)
    journal: list[tuple[Any, ...]] = []
    steps = iter(program)
    dispatches = 0

    def make(label: str) -> Any:
        def callback(dispatcher: Any, dispatchvars: MutableMapping[str, Any]) -> None:
            journal.append((label, dispatchvars["count"]))
            _apply(next(steps, ("nothing",)), dispatchvars, spares)

        return callback

    spares = {"before_dispatch": make("before2"), "after_dispatch": make("after2")}

    class Counting(Recorder):
        def dispatch_once(self, timeout: float | None = None, error_in_handler: Any = None) -> int:
            nonlocal dispatches
            if dispatches == MAX_ROUNDS:
                raise RoundLimitReached
            dispatches += 1
            self.journal.append(("dispatch", timeout))
            return self.inner.dispatch_once(timeout, error_in_handler)

    rec = Counting(journal)
    try:
        loop(
            rec,
            timeout=0,
            count=count,
            before_dispatch=make("before") if use_before else None,
            after_dispatch=make("after") if use_after else None,
        )
    except RoundLimitReached:
        journal.append(("bound",))
    finally:
        rec.inner.close()
    assert journal == expected
