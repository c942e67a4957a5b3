"""Timers for the dispatcher loop: a hashed timing wheel and an idle-expiry table.

Guarantees: a timer never fires before its deadline, it fires at the first `advance(now)`
with `now >= deadline`, timers that fire together come out in deadline order (schedule
order on ties), and a far jump of the clock costs at most one visit per slot.

This module is pure. It knows numbers handed in as `now` (seconds) and nothing else: no
clock reads, no threads, no sockets, no actors, no files. The dispatcher reads the clock
once per cycle and passes it down; tests step `now` one tick at a time.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["ActivityTable", "TimerHandle", "TimerWheel"]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TimerHandle(Generic[T]):
    """A timer scheduled on a `TimerWheel`; use it to cancel the timer."""

    __slots__ = ("_deadline", "_item", "_seq", "_slot", "_tick", "_wheel")

    def __init__(
        self,
        wheel: TimerWheel[T],
        seq: int,
        deadline: float,
        item: T,
        tick: int,
        slot: dict[int, TimerHandle[T]],
    ) -> None:
        self._wheel = wheel
        self._seq = seq
        self._deadline = deadline
        self._item = item
        # Absolute tick index rather than a decrementing `rounds` count: revisiting a
        # slot (the partly elapsed current tick is visited by every advance) stays
        # idempotent, and rounds left is simply (tick - cursor) // slots.
        self._tick = tick
        # Back-reference to the slot dict for O(1) removal; None once fired or cancelled.
        self._slot: dict[int, TimerHandle[T]] | None = slot

    @property
    def deadline(self) -> float:
        """The exact deadline given to `schedule` (not rounded to a tick)."""
        return self._deadline

    @property
    def item(self) -> T:
        """The item `advance` returns when this timer fires."""
        return self._item

    @property
    def active(self) -> bool:
        """True while the timer is pending: not yet fired and not cancelled."""
        return self._slot is not None

    def cancel(self) -> bool:
        """Cancel this timer.

        Returns:
            True if the timer was pending, False if it had already fired or been cancelled.
        """
        return self._wheel.cancel(self)

    def __repr__(self) -> str:
        state = "active" if self.active else "done"
        return f"<TimerHandle deadline={self._deadline!r} {state}>"


class TimerWheel(Generic[T]):
    """A hashed timing wheel (Varghese & Lauck) driven by an explicit `now`.

    Slot `k % slots` holds the timers due in tick `k`, whatever their revolution.
    `schedule` and `cancel` are O(1); `advance` costs the slots it visits (at most all of
    them, however far the clock jumps) plus the timers in those slots.
    """

    __slots__ = (
        "_count",
        "_cursor",
        "_min",
        "_min_valid",
        "_now",
        "_origin",
        "_pending",
        "_slots",
        "_tick",
        "_wheel",
    )

    def __init__(self, *, tick: float = 0.001, slots: int = 512, now: float = 0.0) -> None:
        """Create an empty wheel whose clock starts at `now`.

        Args:
            tick: Width of one slot, in seconds.
            slots: Number of slots in one revolution.
            now: The current time; ticks are counted from here.

        Raises:
            ValueError: `tick` is not a finite positive number, `slots` is not an int of at
                least 1, or `now` is not finite.
        """
        if not (isinstance(tick, int | float) and math.isfinite(tick) and tick > 0):
            raise ValueError(f"tick must be a finite number > 0, got {tick!r}")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        if not (isinstance(now, int | float) and math.isfinite(now)):
            raise ValueError(f"now must be a finite number, got {now!r}")
        self._tick = float(tick)
        self._slots = slots
        self._origin = float(now)
        self._now = float(now)
        # Ticks before the cursor are fully drained; the cursor's own tick may still hold
        # timers whose deadline lies later in that tick.
        self._cursor = 0
        self._wheel: list[dict[int, TimerHandle[T]]] = [{} for _ in range(slots)]
        # Every pending timer, so that a jump with few timers scans them instead of the
        # slots, and next_deadline can recompute without walking the wheel.
        self._pending: dict[int, TimerHandle[T]] = {}
        self._count = 0
        self._min: TimerHandle[T] | None = None
        self._min_valid = True

    @property
    def now(self) -> float:
        """The latest time the wheel was advanced to (or created at)."""
        return self._now

    def __len__(self) -> int:
        return len(self._pending)

    def _tick_of(self, t: float) -> int:
        return math.floor((t - self._origin) / self._tick)

    def schedule(self, deadline: float, item: T) -> TimerHandle[T]:
        """Arrange for `item` to be returned by the first `advance(now)` with now >= deadline.

        A deadline at or before the current time fires at the next `advance`.

        Args:
            deadline: Absolute time, in the same unit and origin as `now`.
            item: What `advance` returns when the timer fires.

        Returns:
            A handle to cancel the timer with.

        Raises:
            ValueError: `deadline` is NaN or infinite.
        """
        if not math.isfinite(deadline):
            raise ValueError(f"deadline must be finite, got {deadline!r}")
        seq = self._count
        self._count += 1
        # Overdue timers go in the cursor's slot, which every advance visits.
        tick = max(self._tick_of(deadline), self._cursor)
        slot = self._wheel[tick % self._slots]
        handle = TimerHandle(self, seq, deadline, item, tick, slot)
        slot[seq] = handle
        self._pending[seq] = handle
        if self._min_valid and (self._min is None or deadline < self._min._deadline):
            self._min = handle
        return handle

    def cancel(self, handle: TimerHandle[T]) -> bool:
        """Cancel a pending timer in O(1).

        Args:
            handle: The handle `schedule` returned.

        Returns:
            True if the timer was pending, False if it had already fired or been cancelled.

        Raises:
            ValueError: `handle` was scheduled on another wheel.
        """
        if handle._wheel is not self:
            raise ValueError(f"{handle!r} belongs to another TimerWheel")
        slot = handle._slot
        if slot is None:
            return False
        self._remove(handle, slot)
        return True

    def _remove(self, handle: TimerHandle[T], slot: dict[int, TimerHandle[T]]) -> None:
        del slot[handle._seq]
        del self._pending[handle._seq]
        handle._slot = None
        if handle is self._min:
            self._min = None
            self._min_valid = False

    def advance(self, now: float) -> list[T]:
        """Move the wheel forward to `now` and return the items of the timers now due.

        A `now` earlier than the wheel's time does not move the wheel back; it only fires
        what is due by that `now`.

        Args:
            now: The current time.

        Returns:
            Items whose deadline is <= now, in deadline order, schedule order on ties.

        Raises:
            ValueError: `now` is NaN or infinite.
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        if self._min_valid and (self._min is None or now < self._min._deadline):
            # Nothing is due yet (the dispatcher asks on every cycle): skip the visit.
            # The cursor may lag; the next real visit covers the slots in between.
            if now > self._now:
                self._now = now
            return []
        target = max(self._tick_of(now), self._cursor)
        visits = min(target - self._cursor + 1, self._slots)
        due: list[tuple[TimerHandle[T], dict[int, TimerHandle[T]]]] = []
        if len(self._pending) < visits:
            # Fewer timers than slots to visit: cheaper to look at each timer once.
            for h in self._pending.values():
                if h._tick <= target and h._deadline <= now:
                    due.append((h, self._wheel[h._tick % self._slots]))
        else:
            for k in range(self._cursor, self._cursor + visits):
                slot = self._wheel[k % self._slots]
                for h in slot.values():
                    if h._tick <= target and h._deadline <= now:
                        due.append((h, slot))
        for h, slot in due:
            self._remove(h, slot)
        self._cursor = target
        if now > self._now:
            self._now = now
        due.sort(key=lambda hs: (hs[0]._deadline, hs[0]._seq))
        return [h._item for h, _ in due]

    def next_deadline(self) -> float | None:
        """Return the earliest pending deadline, exact, or None when no timer is pending.

        O(1) while the earliest timer stays pending; after it fires or is cancelled the
        next call rescans the pending timers once.
        """
        if not self._min_valid:
            self._min = min(
                self._pending.values(), key=lambda h: (h._deadline, h._seq), default=None
            )
            self._min_valid = True
        return None if self._min is None else self._min._deadline


class _Entry(Generic[K, V]):
    __slots__ = ("handle", "last_active", "value")

    def __init__(self, value: V, last_active: float, handle: TimerHandle[K]) -> None:
        self.value = value
        self.last_active = last_active
        self.handle = handle


class ActivityTable(Generic[K, V]):
    """A key -> value table whose entries expire after `idle` seconds without a touch.

    Order is by activity: the front entry is the one touched longest ago, whatever the
    insertion order. Each entry keeps a single wheel timer that is re-armed lazily when it
    fires, so `touch` never goes near the wheel.

    `put` and `touch` take an earlier `now` than one they have already seen as that latest
    one, so that activity order and `last_active` order never disagree; `expire` uses the
    `now` it is given.
    """

    def __init__(
        self,
        *,
        idle: float,
        capacity: int | None = None,
        wheel: TimerWheel[K] | None = None,
        now: float = 0.0,
    ) -> None:
        """Create an empty table.

        Args:
            idle: Seconds without a touch after which an entry expires.
            capacity: Most entries kept; `put` evicts the least active beyond it.
                None for no limit.
            wheel: An empty wheel for this table's sole use (to choose its tick and slots).
                By default a wheel of 512 slots with a tick of idle/256, so each timer lands
                within one revolution.
            now: The current time.

        Raises:
            ValueError: `idle` is not a finite positive number, `capacity` is not None or
                an int of at least 1, or `wheel` already holds timers.
        """
        if not (isinstance(idle, int | float) and math.isfinite(idle) and idle > 0):
            raise ValueError(f"idle must be a finite number > 0, got {idle!r}")
        if capacity is not None and (
            isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1
        ):
            raise ValueError(f"capacity must be None or an int >= 1, got {capacity!r}")
        if wheel is not None and len(wheel):
            # expire() takes everything the wheel returns as a key of this table.
            raise ValueError(f"wheel must be empty, it holds {len(wheel)} timers")
        self._idle = float(idle)
        self._capacity = capacity
        self._wheel: TimerWheel[K] = (
            wheel if wheel is not None else TimerWheel(tick=idle / 256, slots=512, now=now)
        )
        self._latest = max(float(now), self._wheel.now)
        self._entries: OrderedDict[K, _Entry[K, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def _clock(self, now: float) -> float:
        if now > self._latest:
            self._latest = now
        return self._latest

    def get(self, key: K) -> V:
        """Return the value for `key` without touching it.

        Raises:
            KeyError: `key` is not in the table.
        """
        return self._entries[key].value

    def items(self) -> list[tuple[K, V]]:
        """Return a snapshot of the entries, least active first."""
        return [(k, e.value) for k, e in self._entries.items()]

    def keys(self) -> list[K]:
        """Return a snapshot of the keys, least active first."""
        return list(self._entries)

    def put(self, key: K, value: V, now: float) -> list[tuple[K, V]]:
        """Insert or replace `key`; either way the entry counts as touched at `now`.

        Returns:
            The entries evicted to stay within capacity, least active first.
        """
        now = self._clock(now)
        entry = self._entries.get(key)
        if entry is not None:
            entry.value = value
            entry.last_active = now
            self._entries.move_to_end(key)
            return []
        handle = self._wheel.schedule(now + self._idle, key)
        self._entries[key] = _Entry(value, now, handle)
        evicted: list[tuple[K, V]] = []
        if self._capacity is not None:
            while len(self._entries) > self._capacity:
                evicted.append(self.evict_least_active())
        return evicted

    def touch(self, key: K, now: float) -> None:
        """Mark `key` active at `now`, pushing back its expiry. O(1); the wheel is untouched.

        Raises:
            KeyError: `key` is not in the table.
        """
        entry = self._entries[key]
        entry.last_active = self._clock(now)
        self._entries.move_to_end(key)

    def pop(self, key: K) -> V:
        """Remove `key`, cancel its timer and return its value.

        Raises:
            KeyError: `key` is not in the table.
        """
        entry = self._entries.pop(key)
        entry.handle.cancel()
        return entry.value

    def evict_least_active(self) -> tuple[K, V]:
        """Remove and return the entry touched longest ago.

        Raises:
            KeyError: The table is empty.
        """
        if not self._entries:
            raise KeyError("evict_least_active from an empty ActivityTable")
        key, entry = self._entries.popitem(last=False)
        entry.handle.cancel()
        return key, entry.value

    def expire(self, now: float) -> list[tuple[K, V]]:
        """Remove and return every entry idle for at least `idle` seconds at `now`.

        Returns:
            The expired entries, least active first.
        """
        idle_count = 0
        for key in self._wheel.advance(now):
            entry = self._entries[key]
            due = entry.last_active + self._idle
            if due > now:
                # Touched since the timer was armed: re-arm once here instead of per touch.
                entry.handle = self._wheel.schedule(due, key)
            else:
                idle_count += 1
        # Every entry's timer is due no later than last_active + idle, so each idle entry
        # fired above; and activity order is last_active order, so the idle entries are
        # exactly the front of the table, least active first.
        expired: list[tuple[K, V]] = []
        for _ in range(idle_count):
            key, entry = self._entries.popitem(last=False)
            expired.append((key, entry.value))
        return expired

    def next_deadline(self) -> float | None:
        """Return when the next entry expires (exact), or None when the table is empty.

        O(1): the least active entry is the first to expire.
        """
        for entry in self._entries.values():
            return entry.last_active + self._idle
        return None
