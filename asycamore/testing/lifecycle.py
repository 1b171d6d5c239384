"""The context's life cycle and the protocol's other members: ``close``, ``with``, ``in``,
``len``, the class attributes."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from asycamore.dispatcher import IDispatchContext

from .kit import NONE, READ, READ_WRITE, WRITE, KitBase, ready_target
from .support import RecordingTarget, Sockets

__all__ = ["LifecycleRules"]


class LifecycleRules(KitBase):
    """``close`` (idempotent, with targets, from a handler), the context manager,
    ``in``/``len``, ``name``, ``priority`` and ``is_available``."""

    def test_close_is_idempotent(self, backend_factory: Callable[[], IDispatchContext]) -> None:
        """close() may be called any number of times."""
        context = backend_factory()
        context.close()
        context.close()
        context.close()

    def test_close_with_registered_targets(
        self, backend_factory: Callable[[], IDispatchContext], sockets: Sockets
    ) -> None:
        """close() with targets still registered (some closed already) succeeds."""
        context = backend_factory()
        sock_a, _ = sockets.pair()
        sock_b, _ = sockets.pair()
        context.register(RecordingTarget(sock_a), READ)
        context.register(RecordingTarget(sock_b), READ_WRITE)
        sock_a.close()
        context.close()
        context.close()

    def test_close_from_a_handler_ends_the_round(
        self, backend_factory: Callable[[], IDispatchContext], sockets: Sockets
    ) -> None:
        """A handler that closes the context: no other handler runs in that dispatch
        (the closed context has forgotten its targets), and dispatch_once returns."""
        context = backend_factory()
        log: list[tuple[str, str]] = []
        targets = [ready_target(sockets, log, f"t{i}")[0] for i in range(3)]
        for target in targets:
            target.on_read = lambda me: context.close()
            context.register(target, READ_WRITE)
        assert context.dispatch_once(0) == 1
        assert len(log) == 1
        assert len(context) == 0

    def test_context_manager(
        self, backend_factory: Callable[[], IDispatchContext], sockets: Sockets
    ) -> None:
        """``with`` returns the context itself and closes it on the way out, also when
        the body raises (which then propagates)."""
        context = backend_factory()
        closes: list[bool] = []
        real_close = context.close

        def spy() -> None:
            closes.append(True)
            real_close()

        try:
            context.close = spy  # type: ignore[method-assign]
        except AttributeError:  # __slots__: swap in a subclass that records the call
            cls = type(context)
            probe = type(cls.__name__, (cls,), {"__slots__": (), "close": lambda self: spy()})
            context.__class__ = probe
        with context as entered:
            assert entered is context
            sock, _ = sockets.pair()
            entered.register(RecordingTarget(sock), READ)
        assert closes, "__exit__ did not close the context"
        context.close()  # still idempotent after __exit__

        other = backend_factory()
        with pytest.raises(ZeroDivisionError), other:
            raise ZeroDivisionError
        other.close()

    def test_contains_and_len(self, ctx: IDispatchContext, sockets: Sockets) -> None:
        """``in`` and len() follow register/unregister; unknown objects are not in."""
        targets = [RecordingTarget(sockets.pair()[0], name=f"t{i}") for i in range(3)]
        assert len(ctx) == 0
        assert object() not in ctx
        assert targets[0] not in ctx
        for count, target in enumerate(targets, 1):
            ctx.register(target, NONE if count == 3 else READ)
            assert len(ctx) == count
            assert target in ctx
        ctx.modify(targets[0], WRITE)
        assert len(ctx) == 3
        ctx.unregister(targets[1])
        assert targets[1] not in ctx
        assert targets[0] in ctx
        assert len(ctx) == 2
        assert "not a target" not in ctx

    def test_implements_protocol(self, ctx: IDispatchContext) -> None:
        """The context is an IDispatchContext, with a non-empty string name."""
        assert isinstance(ctx, IDispatchContext)
        assert isinstance(ctx.name, str)
        assert ctx.name

    def test_class_priority_and_is_available(self, ctx: IDispatchContext) -> None:
        """The backend class has an int priority and a classmethod is_available()."""
        cls = type(ctx)
        assert type(cls.priority) is int  # type: ignore[attr-defined]
        static = inspect.getattr_static(cls, "is_available")
        assert isinstance(static, classmethod), "is_available must be a classmethod"
        assert cls.is_available() is True  # type: ignore[attr-defined]
        class_name = getattr(cls, "name", None)  # the entry point's name, on the class
        assert isinstance(class_name, str)
        assert ctx.name == class_name
