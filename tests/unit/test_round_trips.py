"""How long a client spins for an ask's reply (`asks.RoundTrips`), without processes."""

from __future__ import annotations

import pytest

from mybus_actors.asks import SPIN_CAP, RoundTrips

PLAIN = 200e-6


def _after(*seconds: float) -> RoundTrips:
    trips = RoundTrips()
    for s in seconds:
        trips.observe(s)
    return trips


def test_before_any_reply_the_plain_spin() -> None:
    assert RoundTrips().spin(PLAIN) == PLAIN


def test_replies_a_little_slower_than_the_spin_are_spun_through() -> None:
    trips = _after(*[250e-6] * 10)
    assert trips.spin(PLAIN) == pytest.approx(375e-6)


def test_replies_the_plain_spin_covers_keep_it() -> None:
    assert _after(*[20e-6] * 10).spin(PLAIN) == PLAIN


def test_replies_slower_than_the_cap_get_the_plain_spin() -> None:
    assert _after(*[5e-3] * 10).spin(PLAIN) == PLAIN
    # just past the cap (1.5 x the usual round trip) is past it
    assert _after(*[SPIN_CAP / 1.5 * 1.01] * 10).spin(PLAIN) == PLAIN
    assert _after(*[SPIN_CAP / 1.5 * 0.99] * 10).spin(PLAIN) > PLAIN


def test_the_estimate_follows_a_change_within_tens_of_replies() -> None:
    trips = _after(*[5e-3] * 20)
    assert trips.spin(PLAIN) == PLAIN
    for _ in range(12):
        trips.observe(250e-6)
    assert trips.spin(PLAIN) > PLAIN  # spinning again
    for _ in range(30):
        trips.observe(250e-6)
    assert trips.spin(PLAIN) == pytest.approx(375e-6, rel=0.05)


def test_one_slow_reply_among_fast_ones_does_not_stop_the_spin() -> None:
    trips = _after(*[250e-6] * 20, 10.0)
    assert trips.spin(PLAIN) > PLAIN
    assert trips.usual is not None and trips.usual < 2 * SPIN_CAP
