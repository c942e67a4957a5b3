"""Children and supervision inside a dispatcher: starting, restarting, ending children.

The decisions are `supervision.Supervisor`'s (pure); this carries them out on the
runtime's cells: an in-process child is reset in its cell (its name kept, what arrives
waiting) and rebuilt after its backoff, a process child is started again with
`ref.spawn` and watched through its pidfd. A pool's router forwards through here too.
A mixin of `runtime.Runtime`, whose state it uses (every method's ``self`` is one).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Final, cast

from mybus_actors import codec
from mybus_actors.actor import Actor
from mybus_actors.address import format_address, parse_address
from mybus_actors.cell import Cell as _Cell
from mybus_actors.codec import Kind
from mybus_actors.errors import (
    ActorNotFound,
    MailboxClosed,
    MyBusError,
    ResourceExhausted,
    SerializationError,
)
from mybus_actors.messages import Terminated
from mybus_actors.pool import PoolRouter, check_pool
from mybus_actors.ref import Ref
from mybus_actors.ref import spawn as spawn_process
from mybus_actors.supervision import (
    RESTART_TYPES,
    ChildSpec,
    Forget,
    GiveUp,
    Restart,
    Supervisor,
)

if TYPE_CHECKING:
    from mybus_actors.runtime import Runtime

__all__ = ["Children"]

_log = logging.getLogger(__name__)
_USER: Final = int(Kind.USER)
_ASK: Final = int(Kind.ASK)


class Children:
    """The supervision half of `runtime.Runtime` (a mixin: see the module's docstring)."""

    @property
    def _rt(self) -> Runtime:
        # The runtime this is a part of, typed as such (a mixin has no state of its own).
        return cast("Runtime", self)


    def spawn_child(
        self,
        parent: _Cell,
        cls: type[Actor],
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        *,
        process: bool,
        restart: str,
    ) -> Ref:
        """Start a child of ``parent`` (see `Actor.spawn`)."""
        rt = self._rt
        if restart not in RESTART_TYPES:
            raise ValueError(f"restart must be one of {', '.join(RESTART_TYPES)}; got {restart!r}")
        if parent.finished or parent.stopping:
            raise MailboxClosed(f"{parent.address} is stopping: it cannot spawn {name!r}")
        sup = rt._supervisor(parent)
        spec = ChildSpec(name, cls, tuple(args), dict(kwargs or {}), restart, process)  # type: ignore[arg-type]
        if process:
            ref = rt._start_process(parent, spec)
        else:
            rt.host(cls, name, spec.args, spec.kwargs, parent=parent)
            ref = Ref(format_address(rt.node, name), os.getpid(), rt.registry.root,
                      rt.node, hosted=self)  # fmt: skip
        sup.add(spec)
        parent.child_refs[name] = ref
        ref._detach = functools.partial(rt._detach_child, parent, name)
        return ref

    def _detach_child(self, parent: _Cell, name: str) -> None:
        """`Ref.stop` of a child: it is stopped for good, not restarted (Erlang's
        terminate_child); the parent hears `Terminated` when it has ended."""
        rt = self._rt
        if threading.get_ident() == rt._thread and parent.supervisor is not None:
            rt._no_restart(parent.supervisor.remove(name))
            timer = parent.restart_timers.pop(name, None)
            if timer is not None:
                timer.cancel()

    def children_of(self, cell: _Cell) -> dict[str, Ref]:
        sup = cell.supervisor
        if sup is None:
            return {}
        return {n: cell.child_refs[n] for n in sup.order() if n in cell.child_refs}

    def _supervisor(self, cell: _Cell) -> Supervisor:
        rt = self._rt
        if cell.supervisor is None:
            strategy = cell.actor.supervision if cell.actor is not None else None
            if strategy is None:
                strategy = Actor.supervision
            cell.supervisor = Supervisor(strategy, rt._clock)
        return cell.supervisor

    def _start_process(self, parent: _Cell, spec: ChildSpec) -> Ref:
        """A child in a process of its own, watched: its end reaches the supervisor."""
        rt = self._rt
        ref = spawn_process(
            spec.cls, spec.name, args=spec.args, kwargs=spec.kwargs,
            node=rt.node, runtime_dir=rt.registry.root,
            _on_error=rt._supervisor(parent).strategy.on_error,
        )  # fmt: skip
        rt.watch(parent, ref.address)
        if spec.restart != "temporary":
            # While it lives, and between its end and its successor, a sender that finds
            # no holder waits for one (up to its timeout) instead of ActorNotFound.
            try:
                rt.registry.expect_restart(spec.name)
            except ResourceExhausted as exc:
                rt._short.failed(exc)
        return ref

    def _no_restart(self, spec: ChildSpec | None) -> None:
        rt = self._rt
        if spec is not None and spec.process:
            rt.registry.end_restart(spec.name)

    def _stop_children(self, cell: _Cell) -> None:
        """End every child of ``cell``, latest started first, wherever it runs."""
        rt = self._rt
        for timer in cell.restart_timers.values():
            timer.cancel()
        cell.restart_timers.clear()
        sup = cell.supervisor
        if sup is None:
            return
        for name in reversed(sup.order()):
            rt._no_restart(sup.children.get(name))
            rt._stop_child(cell, name)
            sup.remove(name)
            ref = cell.child_refs.pop(name, None)
            if ref is not None:
                ref._detach = None

    def _stop_child(self, parent: _Cell, name: str) -> None:
        """Stop one child for good or for its restart; its supervisor hears nothing."""
        rt = self._rt
        child = rt.cells.get(name)
        if child is not None and child.parent is parent:
            if not child.restarting:
                rt._end(child, "stopped")
            else:  # between instances: nothing to stop but the name and what waits
                rt._end(child, "stopped", clean=False)
            return
        ref = parent.child_refs.get(name)
        if ref is not None and not ref._hosted:
            rt.unwatch(parent, ref.address)
            try:
                ref.stop(timeout=5.0)
            except MyBusError as exc:
                _log.warning("%s: stopping child %s: %s", parent.address, ref.address, exc)

    def _ended(self, cell: _Cell, reason: str, *, abnormal: bool, clean: bool) -> None:
        """``cell``'s instance ends: its supervisor (if hosted here) decides what next."""
        rt = self._rt
        parent = cell.parent
        if parent is None or parent.finished or parent.supervisor is None:
            rt._end(cell, reason, clean=clean)
            return
        rt._decide(parent, cell.name, reason, abnormal=abnormal, clean=clean)

    def _decide(
        self, parent: _Cell, name: str, reason: str, *, abnormal: bool, clean: bool
    ) -> None:
        rt = self._rt
        sup = rt._supervisor(parent)
        order = sup.order()
        spec = sup.children.get(name)
        decision = sup.decide(name, abnormal)
        if not isinstance(decision, Restart):
            rt._no_restart(spec)
        address = format_address(rt.node, name)
        if isinstance(decision, Forget):
            child = rt.cells.get(name)
            if child is not None and child.parent is parent:
                rt._end(child, reason, clean=clean)
            ref = parent.child_refs.pop(name, None)
            if ref is not None:
                ref._detach = None
            rt._tell_parent(parent, Terminated(address, reason))
        elif isinstance(decision, GiveUp):
            _log.error("%s: more than %d restarts within %ss: giving up", parent.address,
                       sup.strategy.max_restarts, sup.strategy.within)  # fmt: skip
            child = rt.cells.get(name)
            if child is not None and child.parent is parent:
                rt._end(child, reason, clean=clean)
            sup.remove(name)
            parent.child_refs.pop(name, None)
            rt._stop_children(parent)
            rt._ended(parent, "max restarts", abnormal=True, clean=True)
        else:
            rt._restart(parent, decision, order, name, clean=clean)

    def _restart(
        self, parent: _Cell, decision: Restart, order: list[str], failed: str, *, clean: bool
    ) -> None:
        rt = self._rt
        parent.restarts += len(decision.names)
        _log.info("%s: restarting %s in %.3fs", parent.address, ", ".join(decision.names),
                     decision.delay)  # fmt: skip
        for name in reversed(order):  # latest started first
            if name not in decision.names and name not in decision.dropped:
                continue
            child = rt.cells.get(name)
            hosted = child is not None and child.parent is parent
            if name in decision.dropped:
                rt._stop_child(parent, name)
                ref = parent.child_refs.pop(name, None)
                if ref is not None:
                    ref._detach = None
                rt._tell_parent(parent, Terminated(format_address(rt.node, name), "stopped"))
            elif hosted:
                assert child is not None
                rt._reset(child, clean=clean if name == failed else True)
            elif name != failed:  # a sibling in its own process: stopped, started anew
                rt._stop_child(parent, name)
        for name in decision.names:
            old = parent.restart_timers.pop(name, None)
            if old is not None:
                old.cancel()
            parent.restart_timers[name] = rt.scheduler.at(
                rt._clock() + decision.delay, functools.partial(rt._rebuild, parent, name)
            )

    def _reset(self, cell: _Cell, *, clean: bool) -> None:
        """End ``cell``'s instance but keep its name: what arrives waits for the next."""
        rt = self._rt
        rt._stop_children(cell)
        for timer in list(cell.timers):
            timer.cancel()
        if cell.task is not None:
            cell.task.cancel()
            cell.task = None
        if clean and cell.actor is not None and not cell.restarting:
            try:
                cell.actor.on_stop()
            except Exception:
                _log.exception("%s: on_stop() raised", cell.address)
        rt._fail_asks_of(cell, "restarted while asking")
        cell.actor = None
        cell.supervisor = None
        cell.restarting = True
        cell.failing = cell.killing = cell.stopping = False
        rt.endpoint.pause(cell.name)

    def _rebuild(self, parent: _Cell, name: str) -> None:
        """A restart's backoff has passed: a fresh instance of child ``name``."""
        rt = self._rt
        parent.restart_timers.pop(name, None)
        sup = parent.supervisor
        spec = sup.children.get(name) if sup is not None else None
        if parent.finished or spec is None:
            return
        if spec.process:
            try:
                ref = rt._start_process(parent, spec)
            except MyBusError as exc:
                _log.error("%s: child %s did not start again: %s", parent.address, name, exc)
                rt._decide(parent, name, "failed", abnormal=True, clean=False)
                return
            old = parent.child_refs.get(name)
            if old is not None:  # the Ref handed out follows its actor to the new process
                old._pid, old._process = ref._pid, ref._process
            else:
                parent.child_refs[name] = ref
            return
        cell = rt.cells.get(name)
        if cell is None or not cell.restarting:
            return
        try:
            rt._construct(cell, spec.cls, spec.args, spec.kwargs)
        except Exception:
            _log.exception("%s: on_start() of the restarted %s raised", parent.address, name)
            rt._stop_children(cell)
            cell.actor = None
            rt._decide(parent, name, "failed", abnormal=True, clean=False)
            return
        cell.restarting = False
        while cell.backlog and cell.task is None and not cell.finished and not cell.failing:
            rt._handle(cell, *cell.backlog.popleft())
        if cell.task is None and not cell.finished:
            rt.endpoint.resume(cell.name)

    def spawn_pool(
        self,
        parent: _Cell,
        cls: type[Actor],
        name: str,
        size: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        *,
        process: bool,
        routing: str,
    ) -> Ref:
        """A pool as a child of ``parent`` (see `Actor.spawn_pool`)."""
        rt = self._rt
        check_pool(size, routing)
        pool_args = {"cls": cls, "size": size, "args": tuple(args), "kwargs": kwargs,
                     "process": process, "routing": routing,
                     "on_error": rt._supervisor(parent).strategy.on_error}  # fmt: skip
        ref = rt.spawn_child(parent, PoolRouter, name, (), pool_args, process=False,
                               restart="permanent")  # fmt: skip
        ref._pool = True
        return ref

    def envelope(self, cell: _Cell) -> tuple[str | None, int, int]:
        """(sender, kind, correlation id) of ``cell``'s current message, for `forward`."""
        kind = cell.cur_kind if cell.cur_kind in (_USER, _ASK) else _USER
        return cell.cur_sender, kind, cell.cur_corr if kind == _ASK else 0

    def forward(
        self, cell: _Cell, to: str, message: Any,
        envelope: tuple[str | None, int, int] | None = None,
    ) -> None:  # fmt: skip
        """Pass a message ``cell`` got (its current one, or the one of ``envelope``) on
        to ``to`` as if its sender had sent it there: a tell keeps its sender, an ask
        its sender and correlation id (the reply goes straight back). A pool's router
        does this.

        Raises:
            ActorNotFound, MailboxFull, ResourceExhausted, SerializationError: as tell.
        """
        rt = self._rt
        reply_to, kind, corr = envelope if envelope is not None else rt.envelope(cell)
        if kind == _ASK and reply_to in rt.cells and to not in rt.cells:
            # An ask of an actor hosted here, going to another process: the reply comes
            # to this process's reply mailbox (the asker's own rings may be paused while
            # its async receive awaits it), where its correlation id resolves it.
            reply_to = rt._reply_mailbox()
        rt.tell(cell.name, to, message, kind=kind, corr=corr, reply_to=reply_to)

    def forward_failed(
        self, cell: _Cell, exc: MyBusError, envelope: tuple[str | None, int, int] | None = None
    ) -> None:
        """A message ``cell`` got could not be passed on: an asker hears why (its ask
        fails with the error); the sender of a tell gets it back as a dead letter."""
        rt = self._rt
        sender, kind, corr = envelope if envelope is not None else rt.envelope(cell)
        rt.dead_letters += 1
        if sender is None:
            _log.warning("%s: a message could not be passed on: %s", cell.address, exc)
        elif kind == _ASK:
            rt._reply_error(cell, sender, corr, exc)
        else:
            _log.warning("%s: a message from %s could not be passed on: %s", cell.address,
                         sender, exc)  # fmt: skip

    def send_raw(self, cell: _Cell, to: str, meta: int, payload: bytes) -> None:
        """Send a record as it was read (its envelope inside), from ``cell`` to ``to``."""
        rt = self._rt
        rt.endpoint.send(cell.name, to, payload, meta, timeout=1.0)

    def bounce_raw(self, cell: _Cell, meta: int, payload: bytes, reason: str) -> None:
        """A record that cannot be passed on: an asker hears why; a tell is logged."""
        rt = self._rt
        rt.dead_letters += 1
        try:
            kind, origin, corr = codec.peek(meta, payload)
        except SerializationError:
            kind, origin, corr = -1, None, 0
        if kind == _ASK and origin is not None:
            rt._reply_error(cell, origin, corr, ActorNotFound(reason))
        elif kind == _ASK:
            rt.asks.fail(corr, ActorNotFound(reason))
        else:
            _log.warning("%s: a message is lost: %s", cell.address, reason)

    def restarting(self, parent: _Cell, name: str) -> bool:
        """Whether child ``name`` of ``parent`` is between two instances."""
        rt = self._rt
        if name in parent.restart_timers:
            return True
        cell = rt.cells.get(name)
        return cell is not None and cell.restarting

    def load(self, cell: _Cell, to: str) -> tuple[int, int]:
        """How busy ``to`` looks to ``cell``: (awake and with unread bytes: 1, else 0;
        bytes ``cell`` told it that it has not read yet). For an actor hosted here, what
        waits in its queue counts, 64 bytes a message."""
        rt = self._rt
        target = rt.cells.get(to)
        if target is not None:
            return (1 if target.backlog else 0, 64 * len(target.backlog))
        return rt.endpoint.load(cell.name, to)

    def _tell_parent(self, parent: _Cell, notice: Terminated) -> None:
        rt = self._rt
        if not parent.finished:
            rt._local.append((None, parent.name, _USER, 0, notice))

    def _process_child_ended(self, parent: _Cell, name: str, reason: str) -> None:
        rt = self._rt
        rt._decide(parent, name, reason, abnormal=reason != "stopped", clean=False)

    def _process_child_of(self, cell_name: str, address: str) -> tuple[_Cell, str] | None:
        rt = self._rt
        cell = rt.cells.get(cell_name)
        if cell is None or cell.supervisor is None:
            return None
        node, name = parse_address(address, rt.node)
        spec = cell.supervisor.children.get(name)
        if node != rt.node or spec is None or not spec.process:
            return None
        return cell, name

    def kill(self, cell: _Cell) -> None:
        """End ``cell`` now, without on_stop (an abnormal end for its supervisor)."""
        rt = self._rt
        if cell.finished:
            return
        cell.killing = True
        rt._to_stop_pass()

    def _fail_asks_of(self, cell: _Cell, why: str) -> None:
        rt = self._rt
        name = cell.name
        rt.asks.fail_where(
            lambda fut: isinstance(fut.tag, tuple) and fut.tag[0] == name,
            lambda _: MailboxClosed(f"{cell.address} {why}"),
        )
