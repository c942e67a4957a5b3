"""Every gateway frame authenticated, across real gateway processes on loopback.

An on-path attacker without the secret (a frame-aware proxy between alpha and beta)
injects a frame carrying a pickle, replays, swaps, flips a bit, truncates: each time the
receiving gateway refuses the frame before anything in it is decoded (the pickle's
marker file never appears), closes that connection with one log line naming the peer
address and the reason, the link reconnects, and the numbered stream around it arrives
exactly once and in order. A peer that does hold the secret may still speak only for its
own node and may not address ``gateway`` or the runtime's ``_`` names: such messages
come back to it as errors. Weak secrets are refused at start, an open secret file is
warned about, and a gateway of the old wire version is refused with a clear message.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import gateway_lib as lib  # noqa: E402
from test_gateway import LOCAL, SECRET, WAIT, Cluster, receive_until  # noqa: E402

from mybus_actors import codec, items, wire  # noqa: E402
from mybus_actors.codec import Kind  # noqa: E402
from mybus_actors.items import Control, Run  # noqa: E402

pytestmark = pytest.mark.timeout(120)

HEADER = struct.Struct("<2sBBI")


@pytest.fixture
def cluster(runtime_dir: Path, tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(runtime_dir, tmp_path)
    try:
        yield started
    finally:
        started.close()


# -- an attacker on the path -----------------------------------------------------------


class Marker:
    """Unpickling it creates a file: the proof that a payload was (or was never) decoded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


Frames = list[bytes]
Tamper = Callable[[Frames], Frames]  # the sealed frames held so far -> what to send instead


class TamperingProxy:
    """Forwards TCP to ``target``; on the first connection only, after ``after`` numbered
    frames of the chosen type went one way, hands the frames it holds to ``tamper`` once
    (holding ``hold`` of them first) and sends what it returns. Everything else is
    relayed as it came, frame by frame (the proxy knows the framing, not the secret).
    """

    def __init__(
        self,
        target: tuple[str, int],
        tamper: Tamper,
        *,
        after: int = 3,
        hold: int = 1,
        ftype: int = wire.FrameType.DATA,
        upstream: bool = True,
    ) -> None:
        self.target, self.tamper, self.after, self.hold = target, tamper, after, hold
        self.ftype, self.upstream = ftype, upstream
        self.done = threading.Event()
        self.connections = 0
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server((LOCAL, 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=WAIT)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.settimeout(None)
            self._socks += [client, server]
            self.connections += 1
            first = self.connections == 1
            for src, dst, way in ((client, server, True), (server, client, False)):
                tampering = first and way == self.upstream
                t = threading.Thread(target=self._relay, args=(src, dst, tampering), daemon=True)
                t.start()
                self._threads.append(t)

    def _relay(self, src: socket.socket, dst: socket.socket, tampering: bool) -> None:
        buf, seen = b"", 0
        sent: Frames = []  # the numbered frames passed on so far (a replay takes one)
        held: Frames = []
        handshake = 2  # HELLO and AUTH go bare; what follows is numbered and MAC'd
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if not tampering or self.done.is_set():
                    dst.sendall(buf + data)
                    buf = b""
                    continue
                buf += data
                while len(buf) >= HEADER.size:
                    length = HEADER.unpack_from(buf)[3]
                    if len(buf) < HEADER.size + length:
                        break
                    frame, buf = buf[: HEADER.size + length], buf[HEADER.size + length :]
                    if handshake:
                        handshake -= 1
                        dst.sendall(frame)
                        continue
                    if held or (frame[3] == self.ftype and seen >= self.after):
                        held.append(frame)
                        if len(held) == self.hold:
                            dst.sendall(b"".join(self.tamper(sent + held)[len(sent) :]))
                            self.done.set()
                            dst.sendall(buf)
                            buf = b""
                            break
                        continue
                    seen += frame[3] == self.ftype
                    sent.append(frame)
                    dst.sendall(frame)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(5)


def forged_data(number: int, marker: str) -> bytes:
    """A well-formed DATA frame for the collector carrying a pickle, its MAC a guess."""
    meta, body = codec.encode(Marker(marker), sender="alpha/s0")
    data = bytes(body)
    record = (1 << 40, len(data) | items.WHOLE << 32 | meta << 40, data)
    run = Run("s0", "collector", 1, (1 << 40) - 8 - (len(data) + 7) // 8 * 8, 0, (record,))
    payload = b"".join(items.encode_runs([run]))
    size = 8 + len(payload) + wire.MAC_SIZE
    head = HEADER.pack(b"MB", wire.VERSION, wire.FrameType.DATA, size)
    return head + struct.pack("<Q", number) + payload + os.urandom(wire.MAC_SIZE)


def _flip(frame: bytes, at: int) -> bytes:
    return frame[:at] + bytes((frame[at] ^ 0x04,)) + frame[at + 1 :]


def _number(frame: bytes) -> int:
    return int(struct.unpack_from("<Q", frame, HEADER.size)[0])


TAMPERS: dict[str, tuple[Callable[[str], Tamper], int, str, dict[str, Any]]] = {
    # name: (tamper given the marker path, frames held, beta's reason, proxy options)
    "inject": (
        lambda m: lambda f: [*f[:-1], forged_data(_number(f[-1]), m), f[-1]],
        1, r"bad MAC on a DATA frame", {},
    ),
    "replay": (lambda m: lambda f: [*f, f[-3]], 1, r"where \d+ was due: replayed", {}),
    "swap": (
        lambda m: lambda f: [*f[:-2], f[-1], f[-2]],
        2, r"where \d+ was due: frames dropped or reordered", {},
    ),
    "flip": (lambda m: lambda f: [*f[:-1], _flip(f[-1], 40)], 1, r"bad MAC on a DATA frame", {}),
    "truncate": (lambda m: lambda f: [*f[:-1], f[-1][:-5]], 1, r"bad MAC on a DATA frame", {}),
    # The other way: an acknowledgement beta sends alpha is altered; alpha refuses it.
    "flip-ack": (
        lambda m: lambda f: [*f[:-1], _flip(f[-1], 20)],
        1, r"bad MAC on an? ACK frame",
        {"ftype": wire.FrameType.ACK, "upstream": False, "after": 0},
    ),
}  # fmt: skip


@pytest.mark.parametrize("how", list(TAMPERS))
def test_a_tampered_frame_is_refused_and_the_stream_around_it_arrives_once_in_order(
    cluster: Cluster, how: str
) -> None:
    make, hold, reason, options = TAMPERS[how]
    marker = str(cluster.private / "pwned")
    total = 3000
    beat = ["--heartbeat", "0.2"]
    proxy = TamperingProxy((LOCAL, cluster.port("beta")), make(marker), hold=hold, **options)
    try:
        # Only alpha dials, through the proxy: beta knows no address for alpha.
        alpha = cluster.gateway("alpha", ["beta"], via={"beta": proxy.port}, extra=beat)
        beta = cluster.gateway("beta", [], extra=beat)
        observer = cluster.connect("beta", "observer")
        cluster.spawn(lib.Collector, "collector", "beta", producers=["s0"], notify="observer")
        cluster.spawn(lib.Numbered, "s0", "alpha")
        starter = cluster.connect("alpha", "starter")
        assert starter.ask("beta/collector", "report", timeout=WAIT)["got"] == {}

        assert starter.ask("s0", ("go", "beta/collector", total), timeout=60) == ("done", "s0")
        assert receive_until(observer, lambda m: m[0] == "all ended", timeout=60)
        assert proxy.done.is_set(), "the proxy never got to tamper"
        refuser = alpha if how == "flip-ack" else beta
        peer = "beta" if how == "flip-ack" else "alpha"
        line = refuser.log.wait_for(
            rf"link down: {peer} at 127\.0\.0\.1:\d+ \(protocol error: .*{reason}", WAIT
        )
        assert "WARNING" in line
        alpha.log.wait_for(r"link up: beta", WAIT, count=2)  # it reconnected
        report = observer.ask("collector", "report", timeout=WAIT)
        assert report["misnamed"] == []
        assert report["got"]["alpha/s0"] == list(range(total))  # once each, in order
        assert not os.path.exists(marker), "the injected pickle was decoded"
        for gw in (alpha, beta):
            assert "Traceback" not in gw.log.text()
        lib.wait_released(cluster.dir("alpha"))  # beta's last acknowledgement came
    finally:
        proxy.close()


# -- a peer that knows the secret ------------------------------------------------------


class RawPeer:
    """A peer gateway written by hand on `wire.Connection`: it says what it likes.

    Each message it sends goes as a stream of its own (one ring per sender and target
    on a real node); what the gateway answers comes as ACK entries and DATA runs.
    """

    def __init__(self, node: str, port: int, secret: bytes = SECRET.encode()) -> None:
        self.sock = socket.create_connection((LOCAL, port), timeout=WAIT)
        self.conn = wire.Connection(node=node, secret=secret, incarnation=7)
        self.sock.sendall(self.conn.hello())
        while not isinstance(self._next(), wire.Authenticated):
            pass
        self.entries: list[items.StreamAck] = []
        self.runs: list[Run] = []

    def _next(self) -> wire.Event:
        deadline = time.monotonic() + WAIT
        while True:
            event = self.conn.next_event()
            self.sock.sendall(self.conn.data_to_send())
            if event is not wire.NEED_DATA:
                assert not isinstance(event, wire.NeedDataType)
                return event
            assert time.monotonic() < deadline, "the gateway said nothing"
            self.conn.receive_data(self.sock.recv(1 << 16))

    def send(self, *messages: tuple[str, str, int, bytes]) -> None:
        """(origin, target, meta, body) each, as the first record of a stream."""
        runs = []
        for gen, (origin, target, meta, body) in enumerate(messages, 1):
            end = 8 + (len(body) + 7) // 8 * 8
            runs.append(
                Run(origin, target, gen, 0, 0, ((end, len(body) | 1 << 32 | meta << 40, body),))
            )
        self.sock.sendall(self.conn.send_data(runs))

    def collect(self, bounced: int, answers: int) -> None:
        """Read until ``bounced`` BOUNCED entries and ``answers`` records came."""
        while (
            sum(e.kind is Control.BOUNCED for e in self.entries) < bounced
            or sum(len(r.records) for r in self.runs) < answers
        ):
            event = self._next()
            if isinstance(event, wire.Ack):
                self.entries.extend(event.entries)
            elif isinstance(event, wire.Data):
                self.runs.extend(event.runs)
                done = [
                    items.StreamAck(Control.DONE, r.origin, r.target, r.gen, r.records[-1][0])
                    for r in event.runs
                    if r.records
                ]
                self.sock.sendall(self.conn.send_ack(done))  # so beta may release them
            elif isinstance(event, wire.Ping):
                self.sock.sendall(self.conn.send_pong(event.token))
            assert not isinstance(event, wire.Bye | wire.ConnectionClosed), event

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(self.conn.send_bye("done"))
        self.sock.close()


def message(
    origin: str, to: str, message: Any, *, kind: int, sender: str, corr: int = 0
) -> tuple[str, str, int, bytes]:
    meta, body = codec.encode(message, kind=kind, sender=sender, correlation_id=corr)
    return origin, to, meta, bytes(body)


def test_a_peer_speaks_only_for_its_own_node_and_never_to_the_runtime(cluster: Cluster) -> None:
    beta = cluster.gateway("beta", [])
    cluster.spawn(lib.Echo, "echo", "beta")
    marker = str(cluster.private / "pwned")
    peer = RawPeer("mallory", cluster.port("beta"))
    try:
        peer.send(
            # Claims to be one of beta's own actors, and another node's.
            message("admin", "echo", ("whoami",), kind=Kind.ASK, sender="beta/admin", corr=1),
            message("x", "echo", "hello", kind=Kind.USER, sender="alpha/x"),
            # Addresses the gateway and a reply mailbox (with a pickle that would run).
            message("x", "gateway", ("watch-remote", "beta/echo"), kind=Kind.SYSTEM,
                    sender="mallory/x"),
            message("x", "gateway", ("whoami",), kind=Kind.ASK, sender="mallory/x", corr=2),
            message("x", "_reply-1-0", Marker(marker), kind=Kind.USER, sender="mallory/x"),
            message("x", "_reply-1-0", ("whoami",), kind=Kind.ASK, sender="mallory/x", corr=3),
            # And one message that is fine.
            message("me", "echo", ("whoami",), kind=Kind.ASK, sender="mallory/me", corr=4),
        )  # fmt: skip
        peer.collect(bounced=6, answers=1)
        bounced = [e for e in peer.entries if e.kind is Control.BOUNCED]
        # Every refused one comes back to the peer that sent it, undelivered, saying why.
        assert sorted(e.gen for e in bounced) == [1, 2, 3, 4, 5, 6]
        assert all("refused by node 'beta'" in e.reason for e in bounced), bounced
        assert "not on node 'mallory'" in next(e.reason for e in bounced if e.gen == 1)
        assert "'gateway' takes nothing" in next(e.reason for e in bounced if e.gen == 3)
        # The one good ask was answered by echo, which saw who really asked.
        (answer,) = [r for r in peer.runs if r.target == "me"]
        (_, header, payload) = answer.records[0]
        kind, origin, corr, reply = codec.decode_fields(header >> 40, payload)
        assert (kind, origin, corr) == (Kind.REPLY, "beta/echo", 4)
        assert reply["sender"] == "mallory/me"
        assert not os.path.exists(marker), "a payload to a reply mailbox was decoded"
        # Logged once per link and kind of refusal, not once per message.
        log = cluster.gateways["beta"].log
        log.wait_for(r"refusing a message from node mallory: .*not on node 'mallory'", WAIT)
        log.wait_for(r"refusing a message from node mallory: '(gateway|_reply-1-0)' takes", WAIT)
        assert log.count(r"refusing a message from node mallory") == 2
        lib.wait_released(cluster.dir("beta"))
    finally:
        peer.close()
    assert beta.alive()


def test_an_old_version_gateway_is_refused_with_a_clear_message(cluster: Cluster) -> None:
    beta = cluster.gateway("beta", [])
    node, nonce = b"oldie", os.urandom(32)
    body = bytes((len(node),)) + node + struct.pack("<HQ", 1, 1) + nonce
    with socket.create_connection((LOCAL, beta.port), timeout=WAIT) as s:
        s.sendall(HEADER.pack(b"MB", 1, 1, len(body)) + body)
        s.settimeout(WAIT)
        with contextlib.suppress(ConnectionResetError):
            while s.recv(4096):
                pass
    beta.log.wait_for(
        r"rejected peer 127\.0\.0\.1:\d+: peer speaks wire version 1, this gateway speaks 2", WAIT
    )


# -- secrets ---------------------------------------------------------------------------


def _start(cluster: Cluster, node: str, env_secret: str | None, *flags: str) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "MYBUS_SECRET"}
    if env_secret is not None:
        env["MYBUS_SECRET"] = env_secret
    argv = [
        sys.executable, "-m", "mybus_actors.gateway", "--node", node,
        "--runtime-dir", str(cluster.dir(node)), "--listen", f"{LOCAL}:{cluster.port(node)}",
        *flags,
    ]  # fmt: skip
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("secret", "why"),
    [("x", "is 1 bytes long"), ("fifteen bytes..", "is 15 bytes long"), (" \t  ", "whitespace")],
)
def test_a_weak_secret_is_refused_with_how_to_make_one(
    cluster: Cluster, secret: str, why: str
) -> None:
    done = _start(cluster, "weak", secret)
    assert done.returncode == 2, done.stderr
    assert why in done.stderr and "at least 16 bytes" in done.stderr, done.stderr
    assert 'python -c "import secrets; print(secrets.token_hex(32))"' in done.stderr
    weak_file = cluster.private / "weak-secret"
    weak_file.write_text(secret + "\n")
    weak_file.chmod(0o600)
    done = _start(cluster, "weak", None, "--secret-file", str(weak_file))
    assert done.returncode == 2 and why in done.stderr, done.stderr
    assert str(weak_file) in done.stderr


def test_a_secret_file_others_can_read_is_warned_about(cluster: Cluster) -> None:
    path = cluster.private / "open-secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o644)
    gw = cluster.gateway("open", [], secret=None, secret_file=path)
    line = gw.log.wait_for(r"secret file .* has mode", WAIT)
    assert str(path) in line and "0644" in line
    path.chmod(0o600)
    quiet = cluster.gateway("closed", [], secret=None, secret_file=path)
    assert quiet.log.count(r"has mode") == 0


def test_the_same_secret_from_a_file_and_the_environment_links_up(cluster: Cluster) -> None:
    path = cluster.private / "secret"
    path.write_text(f"  {SECRET}\n")  # surrounding whitespace is not part of it
    path.chmod(0o600)
    cluster.gateway("alpha", ["beta"], secret=None, secret_file=path)
    cluster.gateway("beta", ["alpha"])
    cluster.spawn(lib.Echo, "echo", "beta")
    me = cluster.connect("alpha", "asker")
    assert me.ask("beta/echo", "hi", timeout=WAIT) == "hi"
