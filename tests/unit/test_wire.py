"""Unit tests for mybus_actors.wire: two connections wired together, no sockets.

The same byte streams are fed whole, in odd chunks and one byte at a time; malformed
input must raise `RemoteProtocolError` and nothing else; nothing is ever unpickled. After
the handshake every frame is numbered and MAC'd: tests that craft a frame by hand seal
it with the sending side's own session (`sealed`), so what is tested is the body check.
"""

from __future__ import annotations

import contextlib
import pickle
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mybus_actors import wire
from mybus_actors.errors import LocalProtocolError, RemoteProtocolError
from mybus_actors.items import FIRST, MIDDLE, WHOLE, Control, Record, Run, StreamAck
from mybus_actors.wire import (
    CLOSED,
    HANDSHAKE,
    NEED_DATA,
    OPEN,
    Ack,
    Authenticated,
    Bye,
    Connection,
    ConnectionClosed,
    Data,
    Event,
    Hello,
    Ping,
    Pong,
)

SECRET = b"s3cret-shared-by-both-gateways"
NONCE_A = bytes(range(32))
NONCE_B = bytes(range(100, 132))
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def conn(node: str = "alpha", **kwargs: object) -> Connection:
    args: dict[str, object] = {"secret": SECRET, "incarnation": 7}
    args.update(kwargs)
    return Connection(node=node, **args)  # type: ignore[arg-type]


def pair(**b_kwargs: object) -> tuple[Connection, Connection]:
    a = conn("alpha", nonce=NONCE_A, incarnation=11)
    b = conn("beta", nonce=NONCE_B, incarnation=22, **b_kwargs)
    return a, b


def feed(
    c: Connection, data: bytes, chunk: int | None = None, events: list[Event] | None = None
) -> list[Event]:
    """Feed ``data`` in pieces of ``chunk`` bytes, draining events after each piece."""
    events = [] if events is None else events
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        c.receive_data(data[i : i + step])
        collect(c, events)
    return events


def collect(c: Connection, events: list[Event]) -> None:
    """Append events until NEED_DATA; a CLOSED connection's ConnectionClosed only once."""
    while (ev := c.next_event()) is not NEED_DATA:
        assert not isinstance(ev, wire.NeedDataType)
        if isinstance(ev, ConnectionClosed):
            if not events or events[-1] != ev:  # CLOSED repeats it on every call
                events.append(ev)
            break
        events.append(ev)


def handshake(
    a: Connection, b: Connection, chunk: int | None = None
) -> tuple[list[Event], list[Event]]:
    ha, hb = a.hello(), b.hello()
    ea = feed(a, hb, chunk)
    eb = feed(b, ha, chunk)
    ea += feed(a, b.data_to_send(), chunk)
    eb += feed(b, a.data_to_send(), chunk)
    return ea, eb


def opened(**b_kwargs: object) -> tuple[Connection, Connection]:
    a, b = pair(**b_kwargs)
    handshake(a, b)
    assert a.state is OPEN and b.state is OPEN
    return a, b


def str8(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


def frame(
    ftype: int, body: bytes, *, magic: bytes = b"MB", version: int = 2, length: int | None = None
) -> bytes:
    """A bare frame (as HELLO and AUTH go), header fields as given."""
    size = len(body) if length is None else length
    return magic + bytes((version, ftype)) + struct.pack("<I", size) + body


def sealed(sender: Connection, ftype: int, body: bytes) -> bytes:
    """A frame of any type and body, numbered and MAC'd by ``sender``'s session: what a
    peer holding the secret could send (no check of the body on the way out)."""
    return sender._sealed(wire.FrameType(ftype), (body,))


def hello_body(node: bytes = b"beta", version: int = 2, nonce: bytes = NONCE_B) -> bytes:
    return str8(node) + struct.pack("<HQ", version, 22) + nonce


def records(
    *payloads: bytes, start: int = 0, rtype: int = WHOLE, meta: int = 0
) -> tuple[Record, ...]:
    """Records as a ring lays them out from ``start``: each ends where the next begins."""
    out, pos = [], start
    for payload in payloads:
        pos += 8 + (len(payload) + 7) // 8 * 8
        out.append((pos, len(payload) | rtype << 32 | meta << 40, payload))
    return tuple(out)


def run(recs: tuple[Record, ...], origin: str = "s0", target: str = "echo", *, gen: int = 7,
        start: int = 0, released: int = 0) -> Run:  # fmt: skip
    return Run(origin, target, gen, start, released, recs)


def run_body(*raw_runs: bytes, count: int | None = None) -> bytes:
    """A DATA body by hand: a run count, then runs laid out by `raw_run`."""
    return struct.pack("<I", len(raw_runs) if count is None else count) + b"".join(raw_runs)


def raw_run(recs: bytes, count: int, *, origin: bytes = b"s0", target: bytes = b"echo",
            start: int = 0, released: int = 0) -> bytes:  # fmt: skip
    return str8(origin) + str8(target) + struct.pack("<QQQI", 7, start, released, count) + recs


def raw_record(end: int, payload: bytes, rtype: int = WHOLE, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack("<QQ", end, n | rtype << 32) + payload


def expect_error(c: Connection, data: bytes, match: str, chunk: int | None = None) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        feed(c, data, chunk)
    assert c.state is CLOSED
    with pytest.raises(RemoteProtocolError, match=match):
        c.next_event()  # again, on every later call
    c.receive_data(b"more bytes are ignored")
    with pytest.raises(RemoteProtocolError):
        c.next_event()


# --- the happy path ----------------------------------------------------------------

FIRST_BODY = (10).to_bytes(8, "little") + b"0123"
RUNS: tuple[Run, ...] = (
    run(records(b"hello", b"", b"small one overtakes the big one", meta=5)),
    run(records(FIRST_BODY, rtype=FIRST, meta=1, start=1 << 40), "a.b-c_9", "big", start=1 << 40),
    run(records(struct.pack("<QQ", (1 << 40) + 24, 4) + b"456789", rtype=MIDDLE,
                start=(1 << 40) + 24), "a.b-c_9", "big", start=(1 << 40) + 24,
        released=(1 << 40) + 24),
)  # fmt: skip
ACKS: tuple[StreamAck, ...] = (
    StreamAck(Control.DONE, "s0", "echo", 7, 2**64 - 1),
    StreamAck(Control.BOUNCED, "s0", "nosuch", 8, 56, "no actor 'nosuch' ✓"),
    StreamAck(Control.REWIND, "a.b-c_9", "big", 0, 1 << 40),
)


@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 65536])
def test_handshake_and_exchange(chunk: int | None) -> None:
    a, b = pair()
    assert a.state is HANDSHAKE and a.peer_node is None
    ea, eb = handshake(a, b, chunk)
    assert ea == [Hello("beta", 2, 22), Authenticated("beta", 22)]
    assert eb == [Hello("alpha", 2, 11), Authenticated("alpha", 11)]
    assert (a.state, a.peer_node, a.peer_incarnation) == (OPEN, "beta", 22)
    assert (b.state, b.peer_node, b.peer_incarnation) == (OPEN, "alpha", 11)

    stream = a.send_data(RUNS) + a.send_data([]) + a.send_ping(9) + a.send_pong(10)
    assert feed(b, stream, chunk) == [Data(RUNS), Data(()), Ping(9), Pong(10)]
    out = b.send_ack(ACKS) + b.send_ack([]) + b.send_ping(2**64 - 1)
    assert feed(a, out, chunk) == [Ack(ACKS), Ack(()), Ping(2**64 - 1)]

    assert feed(b, a.send_bye("shutting down ✓"), chunk) == [
        Bye("shutting down ✓"),
        ConnectionClosed(),
    ]
    assert a.state is CLOSED and b.state is CLOSED
    assert b.next_event() == ConnectionClosed()
    b.receive_data(b"after BYE: ignored")
    assert b.next_event() == ConnectionClosed()


def test_peer_hello_before_ours_puts_our_hello_first() -> None:
    a, b = pair()
    assert feed(a, b.hello()) == [Hello("beta", 2, 22)]
    out = a.data_to_send()  # our HELLO, then our AUTH
    with pytest.raises(LocalProtocolError):
        a.hello()
    assert feed(b, out) == [Hello("alpha", 2, 11), Authenticated("alpha", 11)]
    assert feed(a, b.data_to_send()) == [Authenticated("beta", 22)]


def test_send_prepends_pending_auth() -> None:
    a, b = pair()
    ha, hb = a.hello(), b.hello()
    feed(a, hb)
    feed(b, ha)
    feed(a, b.data_to_send())
    assert a.state is OPEN  # our AUTH still pending: send_* puts it first
    assert feed(b, a.send_ping(1)) == [Authenticated("alpha", 11), Ping(1)]
    assert a.data_to_send() == b""


def test_large_frame_in_small_reads_is_linear() -> None:
    a, b = opened()
    payload = bytes(range(256)) * (6 * 4096)  # 6 MiB
    runs = (run(records(payload, payload[:100])),)
    stream = a.send_data(runs)
    t0 = time.perf_counter()
    events: list[Event] = []
    for i in range(0, len(stream), 1024):
        events += feed(b, stream[i : i + 1024])
    assert time.perf_counter() - t0 < 5  # quadratic copying would take minutes
    assert events == [Data(runs)]


def test_eof() -> None:
    a, b = opened()
    b.receive_data(a.send_ping(1))
    b.receive_data(b"")
    assert b.next_event() == Ping(1)
    assert b.next_event() == ConnectionClosed()
    assert b.state is CLOSED
    b.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        b.receive_data(b"x")

    a, b = opened()
    b.receive_data(a.send_ping(1)[:-1])
    b.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed inside a PING frame"):
        b.next_event()

    a = conn()
    a.receive_data(b"MB\x02")
    a.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed inside a frame header"):
        a.next_event()


# --- authentication ----------------------------------------------------------------


def test_wrong_secret_is_a_bad_signature() -> None:
    a, b = pair(secret=b"another secret, as long")
    ha, hb = a.hello(), b.hello()
    assert feed(a, hb) == [Hello("beta", 2, 22)]
    assert feed(b, ha) == [Hello("alpha", 2, 11)]
    auth_a, auth_b = a.data_to_send(), b.data_to_send()
    expect_error(b, auth_a, "bad signature")
    expect_error(a, auth_b, "bad signature")
    assert a.peer_node is None and b.peer_node is None


def test_reflected_auth_tag_fails() -> None:
    a, b = pair()
    a.hello()
    assert feed(a, b.hello()) == [Hello("beta", 2, 22)]
    own_auth = a.data_to_send()
    expect_error(a, own_auth, "bad signature")


def test_reflected_hello_fails() -> None:
    a = conn("alpha", nonce=NONCE_A)
    expect_error(a, a.hello(), "our own node name")
    a = conn("alpha", nonce=NONCE_A)
    expect_error(a, frame(1, hello_body(b"beta", nonce=NONCE_A)), "our own nonce")


def test_expect_peer() -> None:
    a, b = pair(expect_peer="gamma")
    expect_error(b, a.hello(), "expected 'gamma'")
    a, b = pair(expect_peer="alpha")
    assert handshake(a, b)[1][-1] == Authenticated("alpha", 11)


def test_bye_before_authentication_surfaces_the_reason() -> None:
    a, b = pair()
    a.hello()
    expect_error(a, b.send_bye("unknown node"), "BYE before authenticating: 'unknown node'")
    a, b = pair()
    a.hello()  # a long reason is cut to what an unauthenticated peer accepts
    expect_error(a, b.send_bye("y" * 500), "BYE before authenticating: 'y{105}'")


# --- frame order -------------------------------------------------------------------


def test_auth_before_hello() -> None:
    expect_error(conn(), frame(2, bytes(32)), "AUTH frame during the handshake, expected HELLO")


def test_data_before_auth_rejected_from_header() -> None:
    a, b = pair()
    feed(a, b.hello())
    header = frame(3, b"", length=100)  # the body never comes
    expect_error(a, header, "DATA frame during the handshake, expected AUTH")


@pytest.mark.parametrize("ftype", [3, 4, 5, 6])
def test_non_handshake_frame_before_hello(ftype: int) -> None:
    expect_error(conn(), frame(ftype, bytes(8)), "expected HELLO")


def test_second_hello() -> None:
    a, b = pair()
    feed(a, b.hello())
    expect_error(a, frame(1, hello_body()), "HELLO frame during the handshake, expected AUTH")
    a, b = opened()
    expect_error(a, sealed(b, 1, hello_body()), "HELLO frame after the handshake")
    a, b = opened()
    expect_error(a, sealed(b, 2, bytes(32)), "AUTH frame after the handshake")


# --- malformed frames --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (frame(1, hello_body(), magic=b"GE"), "bad magic"),
        (b"GET / HTTP/1.1\r\n", "bad magic"),
        (frame(1, hello_body(), version=1), "peer speaks wire version 1, this gateway speaks 2"),
        (frame(9, b""), "unknown frame type 9"),
        (frame(0, b""), "unknown frame type 0"),
        (frame(1, b"", length=(8 << 20) + 1), "over max_frame"),
        (frame(1, b"", length=108), r"HELLO frame length 108, expected 44\.\.107"),
        (frame(1, hello_body(version=3)), "protocol version 3"),
        (frame(1, hello_body(node=b"bad name")), "invalid node"),
        (frame(1, hello_body(node=b"") + b"\0"), "invalid node b''"),
        (frame(1, hello_body(node=b"x" * 64) + b"\0"), "HELLO frame length 108"),
        (frame(1, hello_body(node=b"x" * 65)[:107]), "invalid node"),
        (frame(1, hello_body(node=b"\xff\xfe")), "invalid node"),
        (frame(1, str8(b"x" * 60) + bytes(45)), "trailing bytes"),
        (frame(1, b"\x64" + bytes(43)), "truncated: node needs 100 bytes, 43 left"),
    ],
)
def test_malformed_before_auth(data: bytes, match: str) -> None:
    expect_error(conn(), data, match)


def test_oversize_rejected_from_the_header_alone() -> None:
    a, _ = opened()
    a.receive_data(frame(3, b"", length=(8 << 20) + 1))  # only the 8-byte header
    with pytest.raises(RemoteProtocolError, match="over max_frame"):
        a.next_event()
    small = conn(max_frame=4096)
    small.receive_data(frame(1, b"", length=4097))
    with pytest.raises(RemoteProtocolError, match="over max_frame 4096"):
        small.next_event()


@pytest.mark.parametrize(
    ("ftype", "body", "match"),
    [
        (4, bytes(3), "ACK frame body of 3 bytes"),
        (5, bytes(9), "PING frame body of 9 bytes"),
        (3, bytes(3), "DATA frame body of 3 bytes"),
        (3, run_body(raw_run(raw_record(16, b"p"), 1), count=2), "truncated: origin length"),
        (3, run_body(raw_run(raw_record(16, b"pay", length=4), 1)), "truncated: record payload"),
        (3, run_body(raw_run(b"", 0, origin=b"a/b")), "invalid origin"),
        (3, run_body(raw_run(b"", 0, target=b"")), "invalid target"),
        (3, run_body(raw_run(b"", 0, start=8, released=16)), "starts before its release"),
        (3, run_body(raw_run(raw_record(16, b"p", rtype=5), 1)), "record of type 5 in a run"),
        (3, run_body(raw_run(raw_record(15, b"p"), 1)), "does not fit after 0"),
        (3, run_body(raw_run(raw_record(16, b"p") + raw_record(8, b"q"), 2)), "after 16"),
        (3, run_body(raw_run(b"", 0)) + b"!", "1 trailing bytes after its 1 runs"),
        (3, run_body(raw_run(b"", 1)), "truncated: record end and header"),
        (4, struct.pack("<I", 1) + b"\x09" + bytes(20), "ACK entry of unknown kind 9"),
        (
            4,
            struct.pack("<I", 1) + b"\x02" + str8(b"s") + str8(b"t") + bytes(16) + b"\x05\x00ab",
            "truncated: reason",
        ),
        (7, struct.pack("<H", 3) + b"ab", "truncated: reason"),
        (7, b"\x01", "BYE frame body of 1 bytes"),
    ],
)
def test_malformed_after_auth(ftype: int, body: bytes, match: str) -> None:
    a, b = opened()
    expect_error(a, sealed(b, ftype, body), match)
    a, b = opened()
    expect_error(a, sealed(b, ftype, body), match, chunk=1)


def test_bye_reason_is_decoded_leniently() -> None:
    a, b = opened()
    assert feed(a, sealed(b, 7, struct.pack("<H", 3) + b"a\xffb")) == [
        Bye("a\ufffdb"),
        ConnectionClosed(),
    ]


# --- local misuse ------------------------------------------------------------------


def test_send_before_open_is_local_error() -> None:
    a, _ = pair()
    for send in (
        lambda: a.send_data([]),
        lambda: a.send_ack([]),
        lambda: a.send_ping(1),
        lambda: a.send_pong(1),
    ):
        with pytest.raises(LocalProtocolError, match="HANDSHAKE"):
            send()
    a.hello()
    with pytest.raises(LocalProtocolError):
        a.hello()
    a.send_bye("bye")
    with pytest.raises(LocalProtocolError):
        a.send_bye("again")
    with pytest.raises(LocalProtocolError, match="CLOSED"):
        a.send_ping(1)


@pytest.mark.parametrize(
    "runs",
    [
        [run((), "bad name")],
        [run((), "s0", "")],
        [run((), "x" * 65)],
        [run((), "é")],
        [Run("s0", "echo", -1, 0, 0, ())],
        [Run("s0", "echo", 1, 1 << 64, 0, ())],
        [run(((16, 5, b"four"),))],  # the header says 5 bytes
        [run(((16, 4 | 9 << 32, b"four"),))],  # no such record type
    ],
)
def test_send_data_bad_runs(runs: Sequence[Run]) -> None:
    a, _ = opened()
    with pytest.raises(LocalProtocolError):
        a.send_data(runs)
    assert a.state is OPEN


@pytest.mark.parametrize(
    "entries",
    [
        [StreamAck(9, "s0", "echo", 1, 1)],  # type: ignore[arg-type]
        [StreamAck(Control.DONE, "s 0", "echo", 1, 1)],
        [StreamAck(Control.DONE, "s0", "echo", -1, 1)],
        [StreamAck(Control.DONE, "s0", "echo", 1, 1 << 64)],
    ],
)
def test_send_ack_bad_entries(entries: Sequence[StreamAck]) -> None:
    a, _ = opened()
    with pytest.raises(LocalProtocolError):
        a.send_ack(entries)
    assert a.state is OPEN


@pytest.mark.parametrize("value", [-1, 1 << 64, 1.0, True])
def test_send_bad_u64(value: int) -> None:
    a, _ = opened()
    for send in (lambda: a.send_ping(value), lambda: a.send_pong(value)):
        with pytest.raises(LocalProtocolError, match="not a u64"):
            send()


def test_send_data_over_max_frame() -> None:
    a, _ = opened()
    with pytest.raises(LocalProtocolError, match="over max_frame"):
        a.send_data([run(records(bytes(8 << 20)))])


def test_long_bye_reason_is_cut() -> None:
    a, b = opened()
    assert feed(b, a.send_bye("x" * 100_000)) == [Bye("x" * 0xFFFF), ConnectionClosed()]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"node": "bad node"}, "bad node"),
        ({"node": ""}, "invalid node"),
        ({"secret": b""}, "secret"),
        ({"secret": b"fifteen bytes.."}, "at least 16"),
        ({"secret": b" " * 40}, "not blank"),
        ({"secret": "text"}, "secret"),
        ({"incarnation": -1}, "incarnation -1"),
        ({"incarnation": 1 << 64}, "incarnation"),
        ({"nonce": b"short"}, "nonce"),
        ({"max_frame": 10}, "max_frame 10"),
        ({"max_frame": 1 << 32}, "max_frame"),
        ({"expect_peer": "a b"}, "expect_peer"),
    ],
)
def test_constructor_checks(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"node": "alpha", "secret": SECRET, "incarnation": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Connection(**args)  # type: ignore[arg-type]


def test_default_nonce_is_random() -> None:
    assert conn().hello()[-32:] != conn().hello()[-32:]


# --- fuzz --------------------------------------------------------------------------

UNPICKLED: list[str] = []


def _side_effect() -> str:
    UNPICKLED.append("executed")
    return "pwned"


class Evil:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_side_effect, ())


EVIL = pickle.dumps(Evil())


@contextlib.contextmanager
def forbid_unpickling() -> Iterator[None]:
    def refuse(*_args: object, **_kwargs: object) -> object:
        pytest.fail("wire unpickled something")

    with contextlib.ExitStack() as stack:
        for target in ("pickle.loads", "pickle.load", "pickle.Unpickler"):
            stack.enter_context(mock.patch(target, refuse))
        if "cloudpickle" in sys.modules or _importable("cloudpickle"):
            stack.enter_context(mock.patch("cloudpickle.loads", refuse))
        yield
    assert UNPICKLED == []


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def drain(
    c: Connection, data: bytes, chunks: Sequence[int], events: list[Event] | None = None
) -> list[Event]:
    """Feed ``data`` in the given chunk sizes, then EOF; only RemoteProtocolError may escape."""
    events = [] if events is None else events
    pos, i = 0, 0
    while pos < len(data):
        size = chunks[i % len(chunks)] if chunks else 1
        i += 1
        feed(c, data[pos : pos + size], events=events)
        pos += size
    c.receive_data(b"")
    collect(c, events)
    return events


def valid_stream() -> tuple[bytes, int, tuple[int, int]]:
    """What beta sends alpha: HELLO, AUTH, traffic, BYE; the end of AUTH; incarnation span."""
    a, b = pair()
    ha, hello = a.hello(), b.hello()
    feed(b, ha)
    auth = b.data_to_send()
    feed(a, hello)
    feed(b, a.data_to_send())
    assert b.state is OPEN
    traffic = (
        b.send_data([*RUNS, run(records(EVIL), "s1", "evil")])
        + b.send_ack(ACKS)
        + b.send_ping(3)
        + b.send_data(
            [run(records((2 * len(EVIL)).to_bytes(8, "little") + EVIL, rtype=FIRST), "s1", "evil")]
        )
        + b.send_bye("done")
    )
    inc_at = 8 + 1 + len("beta") + 2
    return hello + auth + traffic, len(hello + auth), (inc_at, inc_at + 8)


STREAM, AUTH_END, _INCARNATION = valid_stream()


def test_valid_stream_and_evil_payload_stays_bytes() -> None:
    a, _ = pair()
    a.hello()
    with forbid_unpickling():
        events = drain(a, STREAM, [1])
    assert events[:2] == [Hello("beta", 2, 22), Authenticated("beta", 22)]
    data = events[2]
    assert isinstance(data, Data) and data.runs[-1].records[0][2] == EVIL
    assert events[-2:] == [Bye("done"), ConnectionClosed()]
    # The payload is a real exploit: unpickling it (which wire never does) runs code.
    assert pickle.loads(EVIL) == "pwned"
    assert UNPICKLED == ["executed"]
    UNPICKLED.clear()


def test_evil_pickle_before_auth_is_never_parsed() -> None:
    a, b = pair()
    feed(a, b.hello())
    with forbid_unpickling(), pytest.raises(RemoteProtocolError, match="expected AUTH"):
        drain(a, frame(3, run_body(raw_run(raw_record(len(EVIL) + 16, EVIL), 1))), [1])


@FUZZ
@given(data=st.binary(max_size=400), chunks=st.lists(st.integers(1, 64), max_size=20))
def test_fuzz_random_bytes(data: bytes, chunks: list[int]) -> None:
    with forbid_unpickling():
        c = conn()
        try:
            events = drain(c, data, chunks)
        except RemoteProtocolError:
            assert c.state is CLOSED
            return
    assert all(not isinstance(e, Authenticated | Data) for e in events)


@FUZZ
@given(
    ftype=st.integers(1, 7),
    body=st.one_of(
        st.binary(max_size=120),
        st.builds(
            lambda n, raw: run_body(raw_run(raw, n)),
            st.integers(0, 5),
            st.binary(max_size=80),
        ),
    ),
    chunks=st.lists(st.integers(1, 16), max_size=8),
)
def test_fuzz_frames_after_auth(ftype: int, body: bytes, chunks: list[int]) -> None:
    with forbid_unpickling():
        a, b = opened()  # a peer with the secret: the body check is what is fuzzed
        try:
            drain(a, sealed(b, ftype, body), chunks)
        except RemoteProtocolError:
            assert a.state is CLOSED
        a, _ = opened()  # someone without it: nothing gets past the MAC
        with pytest.raises(RemoteProtocolError):
            drain(a, frame(ftype, body + bytes(wire.SEALED_OVERHEAD)), chunks)


@FUZZ
@given(
    cut=st.integers(0, len(STREAM)),
    flips=st.lists(st.integers(0, len(STREAM) * 8 - 1), max_size=4, unique=True),
)
def test_fuzz_truncated_and_flipped_stream(cut: int, flips: list[int]) -> None:
    mutated = bytearray(STREAM)
    for bit in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)
    with forbid_unpickling():
        a, _ = pair()
        a.hello()
        events: list[Event] = []
        try:
            drain(a, bytes(mutated[:cut]), [1], events)
        except RemoteProtocolError:
            assert a.state is CLOSED
    # A flip anywhere in HELLO or AUTH (the incarnation included: the tag signs it)
    # means the peer never counts as authenticated.
    if any(b // 8 < AUTH_END for b in flips):
        assert not any(isinstance(e, Authenticated | Data) for e in events)
        assert a.peer_node is None


# --- every frame after the handshake is authenticated -------------------------------


def frames_of(stream: bytes) -> list[bytes]:
    """Split a byte stream into its frames (by their headers)."""
    out, pos = [], 0
    while pos < len(stream):
        length = struct.unpack_from("<I", stream, pos + 4)[0]
        out.append(stream[pos : pos + 8 + length])
        pos += 8 + length
    return out


def traffic(b: Connection) -> list[bytes]:
    """Five frames beta sends after the handshake, one of them carrying a pickle."""
    return [
        b.send_data([run(records(b"one", meta=1))]),
        b.send_ack([StreamAck(Control.DONE, "s0", "echo", 7, 3)]),
        b.send_data([run(records(EVIL, meta=8), "s1", "evil")]),
        b.send_ping(4),
        b.send_data([run(records(b"three", meta=1, start=16), start=16)]),
    ]


EXPECTED = [
    Data((run(records(b"one", meta=1)),)),
    Ack((StreamAck(Control.DONE, "s0", "echo", 7, 3),)),
    Data((run(records(EVIL, meta=8), "s1", "evil"),)),
]


def forge(ftype: int, number: int, body: bytes) -> bytes:
    """A frame made without the secret: well formed, with a MAC that is a guess."""
    size = 8 + len(body) + wire.MAC_SIZE
    return frame(ftype, struct.pack("<Q", number) + body + bytes(wire.MAC_SIZE), length=size)


@pytest.mark.parametrize(
    ("tamper", "match", "good"),
    [
        # An injected DATA frame in the place of the next one, carrying a pickle.
        (
            lambda f: [
                *f[:1],
                forge(3, 1, run_body(raw_run(raw_record(32, EVIL[:24]), 1))),
                *f[1:],
            ],
            "bad MAC on a DATA frame",
            1,
        ),
        (lambda f: [*f[:2], f[0], *f[2:]], "number 0 where 2 was due: replayed", 2),
        (lambda f: [f[0], f[2], f[1], *f[3:]], "number 2 where 1 was due: frames dropped", 1),
        (lambda f: [f[0], *f[2:]], "number 2 where 1 was due: frames dropped", 1),
        (lambda f: [f[0], f[1][:-3] + bytes((f[1][-3] ^ 1,)) + f[1][-2:], *f[2:]], "bad MAC", 1),
        (lambda f: [f[0], f[1][:12] + bytes((f[1][12] ^ 0x10,)) + f[1][13:], *f[2:]], "bad MAC", 1),
        (
            lambda f: [f[0], f[1][:2] + b"\x02\x05" + f[1][4:], *f[2:]],
            "PING frame body of 29 bytes",
            1,
        ),
        # Truncated, and the stream goes on with the next frame's bytes.
        (lambda f: [f[0], f[1], f[2][:-5], *f[3:]], "bad MAC on a DATA frame", 2),
    ],
    ids=["inject", "replay", "swap", "drop", "flip-mac", "flip-number", "retype", "truncate"],
)
@pytest.mark.parametrize("chunk", [None, 1])
def test_tampered_frames_are_refused_and_nothing_of_them_is_returned(
    tamper: Any, match: str, good: int, chunk: int | None
) -> None:
    a, b = opened()
    mutated = b"".join(tamper(traffic(b)))
    events: list[Event] = []
    with forbid_unpickling(), pytest.raises(RemoteProtocolError, match=match):
        feed(a, mutated, chunk, events)
    assert events == EXPECTED[:good]  # what came before the tampered frame, and no more
    assert a.state is CLOSED


def test_frames_of_another_connection_are_refused() -> None:
    a1, b1 = opened()
    a2 = conn("alpha", nonce=NONCE_B[::-1], incarnation=11)  # a new session: new nonces
    b2 = conn("beta", nonce=NONCE_A[::-1], incarnation=22)
    handshake(a2, b2)
    first = b1.send_ping(1)
    assert feed(a1, first) == [Ping(1)]
    with pytest.raises(RemoteProtocolError, match="bad MAC"):
        feed(a2, first)  # the same bytes, replayed into the other connection


def test_each_direction_has_its_own_key() -> None:
    a, _b = opened()
    reflected = a.send_ping(7)  # our own frame, sent back to us
    with pytest.raises(RemoteProtocolError, match="bad MAC"):
        feed(a, reflected)


def test_frames_are_numbered_from_zero_per_direction() -> None:
    a, b = opened()
    assert (a.frames_sent, b.frames_sent) == (0, 0)
    out = a.send_ping(1) + a.send_data([]) + a.send_bye("x")
    assert [struct.unpack_from("<Q", f, 8)[0] for f in frames_of(out)] == [0, 1, 2]
    assert a.frames_sent == 3 and b.frames_sent == 0


def test_an_old_version_peer_is_refused_with_a_clear_message() -> None:
    a = conn()
    old_hello = frame(1, hello_body(version=1), version=1)
    expect_error(a, old_hello, "peer speaks wire version 1, this gateway speaks 2: run the same")


def _mutations(n: int) -> st.SearchStrategy[tuple[str, int, int]]:
    return st.one_of(
        st.tuples(st.just("flip"), st.integers(0, n - 1), st.integers(0, 1 << 30)),
        st.tuples(st.just("drop"), st.integers(0, n - 2), st.just(0)),
        st.tuples(st.just("duplicate"), st.integers(0, n - 1), st.just(0)),
        st.tuples(st.just("swap"), st.integers(0, n - 2), st.just(0)),
    )


_RUN = st.builds(
    lambda target, payloads, meta, start: run(
        records(*payloads, start=start, meta=meta), "s0", target, start=start
    ),
    st.sampled_from(["echo", "x.y", "_reply-1-0"]),
    st.lists(st.binary(max_size=40), max_size=4),
    st.integers(0, (1 << 24) - 1),
    st.integers(0, 1 << 40).map(lambda n: n * 8),
)
_FRAME = st.one_of(
    st.builds(lambda runs: ("data", tuple(runs)), st.lists(_RUN, max_size=3)),
    st.builds(
        lambda pos: ("ack", (StreamAck(Control.DONE, "s0", "echo", 7, pos),)),
        st.integers(0, 2**64 - 1),
    ),
    st.builds(lambda v: ("ping", v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: ("pong", v), st.integers(0, 2**64 - 1)),
)


@FUZZ
@given(
    plan=st.lists(_FRAME, min_size=2, max_size=8).flatmap(
        lambda frames: st.tuples(st.just(frames), _mutations(len(frames)))
    ),
    chunk=st.sampled_from([None, 1, 5]),
)
def test_any_single_change_to_a_valid_sequence_is_refused_before_decoding(
    plan: tuple[list[tuple[str, Any]], tuple[str, int, int]], chunk: int | None
) -> None:
    """Any one bit flipped, frame dropped, duplicated or two swapped: the receiver raises,
    and returns exactly the frames before the one changed (never it, never one after)."""
    specs, (how, i, bit) = plan
    a, b = opened()
    send = {"data": b.send_data, "ack": b.send_ack, "ping": b.send_ping, "pong": b.send_pong}
    event = {"data": Data, "ack": Ack, "ping": Ping, "pong": Pong}
    frames = [send[k](v) for k, v in specs]
    expected = [event[k](v) for k, v in specs]
    mutated = list(frames)
    if how == "flip":
        changed = bytearray(mutated[i])
        changed[(bit // 8) % len(changed)] ^= 1 << (bit % 8)
        mutated[i] = bytes(changed)
    elif how == "drop":
        del mutated[i]
    elif how == "duplicate":
        mutated.insert(i + 1, mutated[i])
        i += 1
    else:
        mutated[i], mutated[i + 1] = mutated[i + 1], mutated[i]
    events: list[Event] = []
    with forbid_unpickling(), pytest.raises(RemoteProtocolError):
        feed(a, b"".join(mutated), chunk, events)
        a.receive_data(b"")  # a flipped length may leave it waiting: the stream ends here
        collect(a, events)
    assert events == expected[:i]


@pytest.mark.parametrize("where", ["header", "middle", "tag"])
def test_a_large_frame_macd_part_by_part_is_checked_as_a_whole(where: str) -> None:
    # Bodies from BIG_FRAME up are MAC'd part by part and joined once: the receiver,
    # which checks the whole frame in one go, takes them intact and refuses any change.
    a, b = opened()
    payload = bytes(range(256)) * (wire.BIG_FRAME // 256 + 7)
    runs = (run(records(payload, payload[:100], payload[:9])),)
    stream = a.send_data(runs)
    assert len(stream) > wire.BIG_FRAME
    assert feed(b, stream, chunk=4096) == [Data(runs)]
    a, b = opened()
    stream = bytearray(a.send_data(runs))
    at = {"header": wire.HEADER_SIZE + 3, "middle": len(stream) // 2, "tag": len(stream) - 1}
    stream[at[where]] ^= 0x40
    with pytest.raises(RemoteProtocolError, match="bad MAC"):
        feed(b, bytes(stream))
