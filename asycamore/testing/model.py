"""A randomized test: random operation sequences against a model of which handlers must run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from asycamore.dispatcher import Events, IDispatchContext

from .kit import NONE, READ, READ_WRITE, WRITE, KitBase
from .support import RecordingTarget, Sockets

__all__ = ["ModelRules"]


class ModelRules(KitBase):
    """Random register/modify/unregister/peer-write/peer-close/drain/dispatch sequences
    compared with a model (needs hypothesis; skipped without it)."""

    def test_random_operations_match_model(
        self, backend_factory: Callable[[], IDispatchContext]
    ) -> None:
        """Random register/modify/unregister/peer-write/peer-close/drain/dispatch sequences
        on socketpairs agree with a model of which handlers must run (needs hypothesis)."""
        pytest.importorskip("hypothesis")
        run_model_machine(backend_factory)


def run_model_machine(backend_factory: Callable[[], IDispatchContext]) -> None:
    """Drive a context through random operations and compare with a simple model.

    Four socketpairs; the model knows, per slot, the registered interest (or None), whether
    data is pending and whether the peer has closed.  A non-blocking dispatch must call
    ``read`` exactly for the slots with READ interest and data or EOF, ``write`` exactly
    for the slots with WRITE interest (an idle socketpair is always writable), read before
    write, and return the number of calls.  The read handler drains the socket.
    """
    from hypothesis import HealthCheck, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        invariant,
        precondition,
        rule,
        run_state_machine_as_test,
    )

    slots = st.integers(min_value=0, max_value=3)
    interests = st.sampled_from([NONE, READ, WRITE, READ_WRITE])

    class DispatchModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.sockets = Sockets()
            self.ctx = backend_factory()
            self.log: list[tuple[str, str]] = []
            self.pairs = [self.sockets.pair() for _ in range(4)]
            self.targets = [
                RecordingTarget(sock, self.log, str(i)) for i, (sock, _) in enumerate(self.pairs)
            ]
            self.interest: list[Events | None] = [None] * 4
            self.pending = [False] * 4
            self.eof = [False] * 4

        @rule(slot=slots, events=interests)
        def register(self, slot: int, events: Events) -> None:
            if self.interest[slot] is not None:
                with pytest.raises(KeyError):
                    self.ctx.register(self.targets[slot], events)
            else:
                self.ctx.register(self.targets[slot], events)
                self.interest[slot] = events

        @rule(slot=slots, events=interests)
        def register_other_target_same_fd(self, slot: int, events: Events) -> None:
            twin = RecordingTarget(self.pairs[slot][0], self.log, f"twin{slot}")
            if self.interest[slot] is not None:
                with pytest.raises(KeyError):
                    self.ctx.register(twin, events)
                assert twin not in self.ctx

        @rule(slot=slots, events=interests)
        def modify(self, slot: int, events: Events) -> None:
            if self.interest[slot] is None:
                with pytest.raises(KeyError):
                    self.ctx.modify(self.targets[slot], events)
            else:
                self.ctx.modify(self.targets[slot], events)
                self.interest[slot] = events

        @rule(slot=slots)
        def unregister(self, slot: int) -> None:
            if self.interest[slot] is None:
                with pytest.raises(KeyError):
                    self.ctx.unregister(self.targets[slot])
            else:
                self.ctx.unregister(self.targets[slot])
                self.interest[slot] = None

        @rule(slot=slots)
        def peer_write(self, slot: int) -> None:
            if not self.eof[slot]:
                self.pairs[slot][1].send(b"x")
                self.pending[slot] = True

        @precondition(lambda self: sum(self.eof) < 2)
        @rule(slot=slots)
        def peer_close(self, slot: int) -> None:
            self.pairs[slot][1].close()
            self.eof[slot] = True

        @rule(slot=slots)
        def drain(self, slot: int) -> None:
            self.targets[slot].drain()
            self.pending[slot] = False

        @rule()
        def dispatch(self) -> None:
            expected: list[tuple[str, str]] = []
            for slot, events in enumerate(self.interest):
                if events is None:
                    continue
                if events & READ and (self.pending[slot] or self.eof[slot]):
                    expected.append((str(slot), "read"))
                if events & WRITE:
                    expected.append((str(slot), "write"))
            self.log.clear()
            calls = self.ctx.dispatch_once(0)
            assert sorted(self.log) == sorted(expected)
            assert calls == len(expected)
            for slot in range(4):
                kinds = [kind for name, kind in self.log if name == str(slot)]
                assert kinds in ([], ["read"], ["write"], ["read", "write"])
                if kinds and kinds[0] == "read":
                    self.pending[slot] = False

        @invariant()
        def membership(self) -> None:
            assert len(self.ctx) == sum(events is not None for events in self.interest)
            for slot, target in enumerate(self.targets):
                assert (target in self.ctx) == (self.interest[slot] is not None)

        def teardown(self) -> None:
            self.ctx.close()
            self.sockets.close_all()

    run_state_machine_as_test(
        DispatchModel,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
