"""Supervision decisions with a stepped clock: strategies, restart types, budget, backoff."""

from __future__ import annotations

import pytest

from mybus_actors.supervision import (
    ChildSpec,
    Forget,
    GiveUp,
    OneForAll,
    OneForOne,
    Restart,
    RestForOne,
    Strategy,
    Supervisor,
    should_restart,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def supervisor(strategy: Strategy, *restarts: str) -> tuple[Supervisor, Clock]:
    clock = Clock()
    sup = Supervisor(strategy, clock)
    for i, restart in enumerate(restarts):
        sup.add(ChildSpec(f"c{i}", object, restart=restart))  # type: ignore[arg-type]
    return sup, clock


@pytest.mark.parametrize(
    ("restart", "abnormal", "expected"),
    [
        ("permanent", True, True),
        ("permanent", False, True),
        ("transient", True, True),
        ("transient", False, False),
        ("temporary", True, False),
        ("temporary", False, False),
    ],
)
def test_restart_types_are_erlangs(restart: str, abnormal: bool, expected: bool) -> None:
    assert should_restart(restart, abnormal) is expected
    sup, _ = supervisor(OneForOne(), restart)
    decision = sup.decide("c0", abnormal)
    assert isinstance(decision, Restart) is expected
    assert ("c0" in sup.children) is expected


def test_a_child_not_restarted_is_forgotten() -> None:
    sup, _ = supervisor(OneForOne(), "temporary", "permanent")
    assert sup.decide("c0", True) == Forget("c0")
    assert sup.order() == ["c1"]
    assert sup.decide("nobody", True) == Forget("nobody")


def test_each_strategy_restarts_the_children_it_should() -> None:
    kinds = ("permanent", "permanent", "permanent", "permanent")
    assert supervisor(OneForOne(), *kinds)[0].decide("c1", True).names == ["c1"]  # type: ignore[union-attr]
    assert supervisor(OneForAll(), *kinds)[0].decide("c1", True).names == ["c0", "c1", "c2", "c3"]  # type: ignore[union-attr]
    assert supervisor(RestForOne(), *kinds)[0].decide("c1", True).names == ["c1", "c2", "c3"]  # type: ignore[union-attr]


def test_temporary_siblings_are_stopped_with_the_others_and_dropped() -> None:
    sup, _ = supervisor(OneForAll(), "permanent", "temporary", "transient")
    decision = sup.decide("c2", True)
    assert decision == Restart(["c0", "c2"], 0.01, ["c1"])
    assert sup.order() == ["c0", "c2"]


def test_more_than_max_restarts_within_the_window_gives_up() -> None:
    sup, clock = supervisor(OneForOne(max_restarts=3, within=5.0), "permanent")
    for _ in range(3):
        assert isinstance(sup.decide("c0", True), Restart)
        clock.now += 1.0
    assert sup.decide("c0", True) == GiveUp()


def test_restarts_older_than_the_window_do_not_count() -> None:
    sup, clock = supervisor(OneForOne(max_restarts=3, within=1.0), "permanent")
    for _ in range(20):  # one every 0.4 s: never more than 3 in any second
        assert isinstance(sup.decide("c0", True), Restart)
        clock.now += 0.4


def test_max_restarts_zero_gives_up_at_the_first() -> None:
    sup, _ = supervisor(OneForOne(max_restarts=0), "permanent")
    assert sup.decide("c0", True) == GiveUp()


def test_backoff_doubles_per_restart_of_one_child_up_to_the_largest() -> None:
    sup, clock = supervisor(OneForOne(max_restarts=100, within=10.0, backoff=(0.01, 0.05)),
                            "permanent", "permanent")  # fmt: skip
    delays = []
    for _ in range(5):
        decision = sup.decide("c0", True)
        assert isinstance(decision, Restart)
        delays.append(decision.delay)
        clock.now += 0.1
    assert delays == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    # The other child has its own count; and once the window has passed, it starts over.
    assert sup.decide("c1", True).delay == pytest.approx(0.01)  # type: ignore[union-attr]
    clock.now += 11.0
    assert sup.decide("c0", True).delay == pytest.approx(0.01)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_restarts": -1},
        {"within": 0},
        {"backoff": (1.0, 0.5)},
        {"backoff": (-0.1, 1.0)},
        {"on_error": "explode"},
    ],
)
def test_bad_strategy_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        OneForOne(**kwargs)  # type: ignore[arg-type]


def test_strategies_are_values() -> None:
    assert OneForOne() == OneForOne(max_restarts=3, within=5.0, backoff=(0.01, 1.0))
    assert OneForOne() != OneForAll()
    assert OneForOne(on_error="restart").on_error == "restart"
    assert OneForOne(backoff=[0, 2]).backoff == (0.0, 2.0)  # type: ignore[arg-type]
