"""Unit tests for mybus_actors.timers: time is a number stepped by the test, never slept."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mybus_actors.timers import ActivityTable, TimerHandle, TimerWheel

# Dyadic tick so that k * TICK is exact and "the first tick-step with now >= deadline"
# is unambiguous.
TICK = 0.125


def step_until_fired(wheel: TimerWheel[str], limit: int) -> tuple[int, list[str]]:
    """Advance one tick at a time; return the first step index that fired something."""
    for k in range(1, limit + 1):
        fired = wheel.advance(k * TICK)
        if fired:
            return k, fired
    raise AssertionError(f"nothing fired within {limit} ticks")


# --- TimerWheel: construction ------------------------------------------------------------


@pytest.mark.parametrize("tick", [0, -1.0, float("nan"), float("inf")])
def test_wheel_rejects_bad_tick(tick: float) -> None:
    with pytest.raises(ValueError, match="tick"):
        TimerWheel[str](tick=tick)


@pytest.mark.parametrize("slots", [0, -3, True])
def test_wheel_rejects_bad_slots(slots: int) -> None:
    with pytest.raises(ValueError, match=rf"slots.*{slots!r}"):
        TimerWheel[str](slots=slots)


def test_wheel_rejects_non_finite_deadline_and_now() -> None:
    wheel = TimerWheel[str]()
    with pytest.raises(ValueError, match="deadline"):
        wheel.schedule(float("nan"), "x")
    with pytest.raises(ValueError, match="now"):
        wheel.advance(float("inf"))


def test_empty_wheel() -> None:
    wheel = TimerWheel[str](tick=TICK, slots=8, now=3.0)
    assert len(wheel) == 0
    assert wheel.now == 3.0
    assert wheel.next_deadline() is None
    assert wheel.advance(100.0) == []
    assert wheel.now == 100.0


# --- TimerWheel: firing time -------------------------------------------------------------


def test_fires_at_first_tick_step_at_or_after_deadline_not_before() -> None:
    wheel = TimerWheel[str](tick=TICK, slots=16)
    wheel.schedule(5.5 * TICK, "a")
    for k in range(1, 6):
        assert wheel.advance(k * TICK) == [], f"fired early at step {k}"
    assert wheel.advance(6 * TICK) == ["a"]
    assert len(wheel) == 0
    assert wheel.advance(7 * TICK) == []


def test_fires_inside_a_tick_once_now_reaches_the_deadline() -> None:
    wheel = TimerWheel[str](tick=1.0, slots=8)
    wheel.schedule(2.5, "a")
    assert wheel.advance(2.25) == []
    assert wheel.advance(2.49) == []
    assert wheel.advance(2.5) == ["a"]


def test_deadline_at_a_tick_boundary_fires_exactly_then() -> None:
    wheel = TimerWheel[str](tick=TICK, slots=8)
    wheel.schedule(3 * TICK, "a")
    assert step_until_fired(wheel, 20) == (3, ["a"])


def test_past_and_current_deadlines_fire_at_next_advance() -> None:
    wheel = TimerWheel[str](tick=1.0, slots=8)
    wheel.advance(10.0)
    wheel.schedule(3.0, "past")
    wheel.schedule(10.0, "now")
    wheel.schedule(-50.0, "before-origin")
    assert wheel.next_deadline() == -50.0
    assert wheel.advance(10.0) == ["before-origin", "past", "now"]


def test_delay_beyond_one_revolution_fires_on_the_right_revolution() -> None:
    slots = 8
    wheel = TimerWheel[str](tick=TICK, slots=slots)
    deadline = 3.5 * slots * TICK  # 28 ticks: passes its slot at ticks 4, 12 and 20
    wheel.schedule(deadline, "far")
    k, fired = step_until_fired(wheel, 100)
    assert (k, fired) == (28, ["far"])


def test_several_revolutions_in_one_slot_fire_one_revolution_at_a_time() -> None:
    wheel = TimerWheel[int](tick=1.0, slots=4)
    for rev in range(5):
        wheel.schedule(1.5 + 4 * rev, rev)  # all hash to slot 1
    fired_at = {}
    for now in range(1, 25):
        for item in wheel.advance(float(now)):
            fired_at[item] = now
    assert fired_at == {0: 2, 1: 6, 2: 10, 3: 14, 4: 18}


def test_scheduling_after_time_has_passed_uses_the_current_position() -> None:
    wheel = TimerWheel[str](tick=1.0, slots=4)
    wheel.advance(13.0)
    wheel.schedule(14.5, "a")  # 1.5 ticks ahead: must not wait for a later revolution
    wheel.schedule(13.0 + 4 * 3 + 0.5, "b")
    assert wheel.advance(14.0) == []
    assert wheel.advance(15.0) == ["a"]
    assert wheel.advance(25.0) == []
    assert wheel.advance(26.0) == ["b"]


def test_now_going_backwards_fires_nothing_early_and_keeps_the_wheel_time() -> None:
    wheel = TimerWheel[str](tick=1.0, slots=8)
    wheel.advance(10.0)
    wheel.schedule(9.0, "a")
    wheel.schedule(10.5, "b")
    assert wheel.advance(8.0) == []
    assert wheel.now == 10.0
    assert wheel.advance(9.0) == ["a"]
    assert wheel.advance(10.5) == ["b"]


# --- TimerWheel: cancel ------------------------------------------------------------------


def test_cancel_through_handle_and_wheel() -> None:
    wheel = TimerWheel[str](tick=TICK, slots=8)
    a = wheel.schedule(2 * TICK, "a")
    b = wheel.schedule(3 * TICK, "b")
    c = wheel.schedule(4 * TICK, "c")
    assert isinstance(a, TimerHandle)
    assert a.deadline == 2 * TICK and a.item == "a" and a.active
    assert a.cancel() is True
    assert not a.active
    assert wheel.cancel(b) is True
    assert a.cancel() is False
    assert wheel.cancel(b) is False
    assert len(wheel) == 1
    assert wheel.advance(10 * TICK) == ["c"]
    assert not c.active
    assert c.cancel() is False
    assert wheel.cancel(c) is False


def test_cancel_a_handle_of_another_wheel_is_an_error() -> None:
    one, other = TimerWheel[str](), TimerWheel[str]()
    handle = one.schedule(1.0, "a")
    with pytest.raises(ValueError, match="another"):
        other.cancel(handle)
    assert handle.active


def test_cancel_one_of_many_in_a_slot_leaves_the_others() -> None:
    wheel = TimerWheel[int](tick=1.0, slots=2)
    handles = [wheel.schedule(1.5 + 2 * (i % 3), i) for i in range(9)]
    for h in handles[::2]:
        assert h.cancel()
    assert sorted(wheel.advance(100.0)) == [1, 3, 5, 7]


# --- TimerWheel: order and volume --------------------------------------------------------


def test_many_timers_in_one_slot_fire_in_deadline_order() -> None:
    rng = random.Random(1)
    wheel = TimerWheel[float](tick=1.0, slots=8)
    deadlines = [3.0 + rng.random() for _ in range(1000)]  # all in tick 3
    later = [3.0 + 8 * r + rng.random() for r in (1, 2) for _ in range(50)]  # same slot
    pool = deadlines + later
    rng.shuffle(pool)
    for d in pool:
        wheel.schedule(d, d)
    assert wheel.advance(4.0) == sorted(deadlines)
    assert len(wheel) == len(later)
    assert wheel.advance(100.0) == sorted(later)


def test_equal_deadlines_fire_in_schedule_order() -> None:
    wheel = TimerWheel[int](tick=1.0, slots=4)
    for i in range(20):
        wheel.schedule(2.0 if i % 2 else 6.0, i)
    assert wheel.advance(2.0) == list(range(1, 20, 2))
    assert wheel.advance(6.0) == list(range(0, 20, 2))


@pytest.mark.timeout(10)
def test_huge_jump_with_few_timers_is_cheap() -> None:
    tick = 0.001
    wheel = TimerWheel[str](tick=tick, slots=512)
    wheel.schedule(0.0105, "a")
    wheel.schedule(5.0, "b")
    wheel.schedule(999.9999, "c")
    wheel.schedule(10**6 * tick + 1.0, "too-late")
    start = time.perf_counter()
    fired = wheel.advance(10**6 * tick)  # a million ticks
    elapsed = time.perf_counter() - start
    assert fired == ["a", "b", "c"]
    assert elapsed < 0.5, f"advance over 10**6 ticks took {elapsed:.3f}s"
    # A jump of 10**12 ticks would never finish if advance walked the ticks.
    assert wheel.advance(10**9) == ["too-late"]
    assert len(wheel) == 0


def test_jump_with_many_timers_fires_each_due_one_once() -> None:
    wheel = TimerWheel[int](tick=1.0, slots=16)
    rng = random.Random(2)
    deadlines = [rng.uniform(0, 200) for _ in range(500)]  # more timers than slots
    for i, d in enumerate(deadlines):
        wheel.schedule(d, i)
    fired = wheel.advance(100.0)
    assert fired == sorted(
        (i for i, d in enumerate(deadlines) if d <= 100.0), key=lambda i: deadlines[i]
    )
    rest = wheel.advance(200.0)
    assert sorted(fired + rest) == list(range(500))


# --- TimerWheel: next_deadline -----------------------------------------------------------


def test_next_deadline_tracks_schedule_cancel_and_fire() -> None:
    wheel = TimerWheel[str](tick=1.0, slots=4)
    b = wheel.schedule(7.25, "b")
    assert wheel.next_deadline() == 7.25
    a = wheel.schedule(2.75, "a")
    assert wheel.next_deadline() == 2.75  # exact, not rounded to a tick
    c = wheel.schedule(30.5, "c")
    assert wheel.next_deadline() == 2.75
    a.cancel()
    assert wheel.next_deadline() == 7.25
    wheel.schedule(1.0, "d")
    assert wheel.next_deadline() == 1.0
    assert wheel.advance(8.0) == ["d", "b"]
    assert wheel.next_deadline() == 30.5
    wheel.cancel(c)
    assert wheel.next_deadline() is None
    assert not b.active


# --- TimerWheel: property test against a sorted-list model ------------------------------

op = st.one_of(
    st.tuples(st.just("schedule"), st.floats(-5.0, 60.0, allow_nan=False)),
    st.tuples(st.just("cancel"), st.integers(0, 200)),
    st.tuples(
        st.just("advance"),
        st.one_of(st.floats(-2.0, 12.0, allow_nan=False), st.floats(0.0, 10**4)),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    tick=st.sampled_from([0.1, 0.25, 1.0, 3.0]),
    slots=st.integers(1, 9),
    start=st.floats(-100.0, 100.0, allow_nan=False),
    ops=st.lists(op, max_size=80),
)
def test_wheel_matches_sorted_list_model(
    tick: float, slots: int, start: float, ops: list[tuple[str, float]]
) -> None:
    wheel = TimerWheel[int](tick=tick, slots=slots, now=start)
    handles: list[TimerHandle[int]] = []
    model: list[tuple[float, int]] = []  # pending (deadline, seq)
    fired_ever: set[int] = set()
    now = start
    for name, arg in ops:
        if name == "schedule":
            deadline = now + arg
            handles.append(wheel.schedule(deadline, len(handles)))
            model.append((deadline, len(handles) - 1))
        elif name == "cancel" and handles:
            i = int(arg) % len(handles)
            pending = any(seq == i for _, seq in model)
            assert handles[i].cancel() is pending
            model = [(d, s) for d, s in model if s != i]
        elif name == "advance":
            now = now + arg
            due = sorted(m for m in model if m[0] <= now)
            assert wheel.advance(now) == [s for _, s in due]
            assert fired_ever.isdisjoint(s for _, s in due)
            fired_ever.update(s for _, s in due)
            model = [m for m in model if m[0] > now]
        assert len(wheel) == len(model)
        assert wheel.next_deadline() == min((d for d, _ in model), default=None)
    assert wheel.advance(now + 10**6) == [s for _, s in sorted(model)]


# --- ActivityTable -----------------------------------------------------------------------


def test_table_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="idle"):
        ActivityTable[str, int](idle=0)
    with pytest.raises(ValueError, match=r"capacity.*0"):
        ActivityTable[str, int](idle=1.0, capacity=0)
    busy = TimerWheel[str]()
    busy.schedule(1.0, "x")
    with pytest.raises(ValueError, match="wheel"):
        ActivityTable[str, int](idle=1.0, wheel=busy)


def test_table_basic_mapping() -> None:
    table = ActivityTable[str, int](idle=10.0)
    assert table.next_deadline() is None
    assert table.put("a", 1, now=0.0) == []
    table.put("b", 2, now=1.0)
    assert "a" in table and "z" not in table
    assert len(table) == 2
    assert table.get("a") == 1
    assert table.items() == [("a", 1), ("b", 2)]
    assert table.keys() == ["a", "b"]
    with pytest.raises(KeyError):
        table.get("z")
    with pytest.raises(KeyError):
        table.touch("z", 2.0)
    with pytest.raises(KeyError):
        table.pop("z")


def test_get_does_not_touch() -> None:
    table = ActivityTable[str, int](idle=10.0)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=1.0)
    table.get("a")
    assert table.evict_least_active() == ("a", 1)


def test_evicts_least_recently_touched_not_oldest_inserted() -> None:
    table = ActivityTable[str, int](idle=10.0)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=1.0)
    table.put("c", 3, now=2.0)
    table.touch("a", now=3.0)
    assert table.evict_least_active() == ("b", 2)
    assert table.keys() == ["c", "a"]
    table.put("c", 33, now=4.0)  # replacing counts as a touch
    assert table.evict_least_active() == ("a", 1)
    assert table.evict_least_active() == ("c", 33)
    with pytest.raises(KeyError):
        table.evict_least_active()


def test_capacity_eviction_on_put() -> None:
    table = ActivityTable[str, int](idle=10.0, capacity=2)
    assert table.put("a", 1, now=0.0) == []
    assert table.put("b", 2, now=1.0) == []
    table.touch("a", now=2.0)
    assert table.put("c", 3, now=3.0) == [("b", 2)]
    assert table.put("a", 11, now=4.0) == []  # replace: no growth, no eviction
    assert table.put("d", 4, now=5.0) == [("c", 3)]
    assert table.items() == [("a", 11), ("d", 4)]
    # An evicted entry's timer is gone: nothing comes back from expire later.
    assert table.expire(100.0) == [("a", 11), ("d", 4)]
    assert len(table) == 0


def test_expire_returns_only_idle_entries_and_touch_extends_life() -> None:
    table = ActivityTable[str, int](idle=10.0)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=0.0)
    table.put("c", 3, now=5.0)
    table.touch("a", now=8.0)
    assert table.expire(9.99) == []
    assert table.expire(10.0) == [("b", 2)]  # idle for exactly `idle`: expired
    assert table.expire(14.99) == []
    assert table.expire(15.0) == [("c", 3)]
    assert "a" in table  # past its original deadline of 10.0
    assert table.next_deadline() == 18.0
    assert table.expire(17.99) == []
    assert table.expire(18.0) == [("a", 1)]
    assert table.next_deadline() is None


def test_lazy_rearm_over_many_touches() -> None:
    idle = 1.0
    wheel = TimerWheel[str](tick=0.01, slots=16)
    table = ActivityTable[str, int](idle=idle, wheel=wheel)
    table.put("busy", 1, now=0.0)
    table.put("quiet", 2, now=0.0)
    now = 0.0
    for _ in range(5000):
        now += 0.01
        table.touch("busy", now)
        # One wheel timer per entry, never one per touch.
        assert len(wheel) <= 2
        expired = table.expire(now)
        assert ("busy", 1) not in expired
        if now < 1.0 - 1e-9:
            assert expired == []
    assert "busy" in table and "quiet" not in table
    assert len(wheel) == 1
    assert table.next_deadline() == pytest.approx(now + idle)
    assert table.expire(now + idle) == [("busy", 1)]
    assert len(wheel) == 0


def test_expiry_follows_next_deadline_exactly() -> None:
    table = ActivityTable[int, str](idle=2.0, wheel=TimerWheel[int](tick=0.5, slots=4))
    for i in range(6):
        table.put(i, str(i), now=float(i))
    table.touch(0, now=6.0)
    got = []
    while (due := table.next_deadline()) is not None:
        before = table.expire(due - 0.001)
        assert before == []
        got += table.expire(due)
    assert [k for k, _ in got] == [1, 2, 3, 4, 5, 0]


def test_pop_cancels_the_timer() -> None:
    wheel = TimerWheel[str](tick=0.5, slots=8)
    table = ActivityTable[str, int](idle=3.0, wheel=wheel)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=0.0)
    assert len(wheel) == 2
    assert table.pop("a") == 1
    assert len(wheel) == 1
    assert "a" not in table
    table.put("a", 10, now=2.0)  # a new life, not the popped entry's timer
    assert table.expire(3.0) == [("b", 2)]
    assert table.expire(4.99) == []
    assert table.expire(5.0) == [("a", 10)]
    assert len(wheel) == 0


def test_stale_now_counts_as_latest_and_keeps_order() -> None:
    table = ActivityTable[str, int](idle=10.0)
    table.put("a", 1, now=5.0)
    table.put("b", 2, now=6.0)
    table.touch("a", now=1.0)  # clock read before b's: still the most recent touch
    assert table.keys() == ["b", "a"]
    assert table.next_deadline() == 16.0
    assert table.expire(16.0) == [("b", 2), ("a", 1)]


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["put", "touch", "pop", "expire", "evict"]),
            st.integers(0, 5),
            st.floats(0.0, 3.0, allow_nan=False),
        ),
        max_size=60,
    ),
    capacity=st.one_of(st.none(), st.integers(1, 4)),
)
def test_table_matches_model(ops: list[tuple[str, int, float]], capacity: int | None) -> None:
    idle = 2.0
    table = ActivityTable[int, int](
        idle=idle, capacity=capacity, wheel=TimerWheel[int](tick=0.25, slots=4)
    )
    model: dict[int, tuple[int, float]] = {}  # key -> (value, last_active), activity order
    now = 0.0
    for n, (name, key, dt) in enumerate(ops):
        now += dt
        if name == "put":
            model.pop(key, None)
            model[key] = (n, now)
            expect = []
            while capacity is not None and len(model) > capacity:
                k = next(iter(model))
                expect.append((k, model.pop(k)[0]))
            assert table.put(key, n, now) == expect
        elif name == "touch" and key in model:
            model[key] = (model.pop(key)[0], now)
            table.touch(key, now)
        elif name == "pop" and key in model:
            assert table.pop(key) == model.pop(key)[0]
        elif name == "expire":
            expect = [(k, v) for k, (v, t) in model.items() if t + idle <= now]
            for k, _ in expect:
                del model[k]
            assert table.expire(now) == expect
        elif name == "evict" and model:
            k = next(iter(model))
            assert table.evict_least_active() == (k, model.pop(k)[0])
        assert table.items() == [(k, v) for k, (v, _) in model.items()]
        first = next(iter(model.values()), None)
        assert table.next_deadline() == (None if first is None else first[1] + idle)
