"""The iceoryx2 peer of the benchmarks: its services, ports and loops (Python binding).

A plain module next to the scripts, like ``_common``; importing it has no side effects
(``iceoryx2`` is optional: `MISSING` says why it is not there).

A `Channel` is one direction of traffic: a publish-subscribe service of
``Slice[c_uint8]`` and an event service of the same name. Every service is created with
safe overflow disabled and every publisher with the ``RetryUntilDelivered`` backpressure
strategy, so a full subscriber buffer holds the publisher back instead of dropping the
oldest sample: nothing is lost. The sender copies each payload into a loaned sample
(``loan_slice_uninit``, ``ctypes.memmove``, ``assume_init``, ``send``) and notifies the
event service after each send; the receiver copies each payload out
(``ctypes.string_at`` of the sample's payload address and element count: a ``bytes``
the receiver owns, as ``bytes(sample.payload().as_memory_view())`` would give, without
the typed view built in Python per sample) and drops the sample at once. So both sides
own their bytes, as with every other peer. An `Asker` and an `Answerer` are the two ends
of a request-response service (``Slice[c_uint8]`` both ways, safe overflow disabled for
requests and responses, ``RetryUntilDelivered`` for the client and the server), with an
event service each way for the wake-ups; the payloads are copied in and out alike.

Wake-ups: a receiver with nothing to read first spins on its port's ``receive`` (a
subscriber's, a server's, a pending response's) for ``spin`` seconds (as a mybus
endpoint does: without yielding for the first 50 us, then yielding the CPU each round),
then sleeps in ``Listener.timed_wait`` (bounded slices, so an interval timer in the
caller is seen at least once a slice). The notifier's own state makes a notification
cheap while one is pending and not yet collected (an atomic, no system call), so
notifying after every send costs little when the receiver is awake.
A sender is never woken: with ``RetryUntilDelivered`` it waits inside ``send`` (the
binding's adaptive wait) until the subscriber has room; an interval timer (SIGALRM)
still ends that wait with its TimeoutError (checked with a receiver killed mid-stream).

Files: every run has its own `Domain`, a private file prefix and root directory for
iceoryx2 (its defaults are the prefix ``iox2_``, shared memory in ``/dev/shm`` and the
root ``/tmp/iceoryx2/``), so the run's files are known and nothing of another run, or
of another user of iceoryx2, is touched. Dropping the last node removes every file but
iceoryx2's global management segment (``/dev/shm/<prefix>*.global_mgmt``, which outlives
the nodes); `Domain.remove` removes that one, reports any other file as left behind,
removes it, and checks and removes the root directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.metadata
import os
import pickle
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
from _common import DICT_VALUE, Cleanup

try:
    import iceoryx2 as iox2
except ImportError as _exc:  # iceoryx2 is an optional peer of the "benchmark" extra
    iox2 = None
    MISSING: str | None = f"{type(_exc).__name__}: {_exc}"
else:
    MISSING = None

SHM_DIR: Final = Path("/dev/shm")
BUFFER: Final = 64  # samples a subscriber holds; see the scripts' "Choices"
_HOT_SPIN: Final = 50e-6  # spin without yielding for this long, then yield each round
_WAIT_SLICE: Final = 1.0  # one Listener.timed_wait; the caller's timer bounds the loop
_KEPT: Final = ".global_mgmt"  # the one file iceoryx2 keeps once every node is gone


def version() -> str | None:
    try:
        return importlib.metadata.version("iceoryx2")
    except importlib.metadata.PackageNotFoundError:
        return None


@attrs.frozen
class Domain:
    """A run's private iceoryx2 instance: its file prefix, root directory and the tag in
    its service names ("mybus-bench/<run>/<name>"), all unique to the run.

    Picklable: the parent makes one and hands it to every child process it starts.
    """

    run: str
    prefix: str
    root: str

    @classmethod
    def create(cls) -> Domain:
        # Short: a listener's socket, root + prefix + a 30-digit id + ".event", must fit
        # in the 108 bytes of a Unix socket's path.
        token = secrets.token_hex(4)
        root = tempfile.mkdtemp(prefix="mybus-iox2-")
        return cls(f"{os.getpid()}-{token}", f"mybus_{token}_", f"{root}/")

    def node(self) -> Any:
        """A node of this domain; iceoryx2 leaves the process's signal handlers alone."""
        config = iox2.config.default()
        config.global_cfg.prefix = iox2.FileName.new(self.prefix)
        config.global_cfg.root_path = iox2.Path.new(self.root)
        return (
            iox2.NodeBuilder.new()
            .config(config)
            .signal_handling_mode(iox2.SignalHandlingMode.Disabled)
            .create(iox2.ServiceType.Ipc)
        )

    def shm_files(self) -> list[Path]:
        return sorted(SHM_DIR.glob(f"{self.prefix}*"))

    def remove(self, cleanup: Cleanup) -> None:
        """Check and remove the domain's files (every node of it must be gone by now)."""
        gc.collect()  # a node or port caught in a reference cycle is dropped here
        for path in self.shm_files():
            if not path.name.endswith(_KEPT):
                cleanup.problems.append(f"iceoryx2: {path} left behind")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.shm_files():
            cleanup.problems.append(f"iceoryx2: {SHM_DIR}/{self.prefix}* could not be removed")
        cleanup.remove_dir(Path(self.root), "iceoryx2 root dir")


def service_name(name: str) -> Any:
    """``name`` is "<run>/<what>": see `Domain`."""
    return iox2.ServiceName.new(f"mybus-bench/{name}")


class Channel:
    """One direction of traffic: ``name``'s pub/sub service and its event service."""

    def __init__(self, node: Any, name: str, buffer: int = BUFFER) -> None:
        self.name = name
        service = service_name(name)
        self.pubsub = (
            node.service_builder(service)
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(buffer)
            .open_or_create()
        )
        self.event = node.service_builder(service).event().open_or_create()
        self.buffer = buffer


class Writer:
    """A channel's sending end: a publisher and a notifier."""

    def __init__(self, channel: Channel, max_len: int = 64) -> None:
        self.publisher = (
            channel.pubsub.publisher_builder()
            .initial_max_slice_len(max_len)
            .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        self.notifier = channel.event.notifier_builder().create()
        self.loan = self.publisher.loan_slice_uninit
        self.notify = self.notifier.notify

    def put(self, data: bytes) -> None:
        """Copy ``data`` into a sample, send it, notify."""
        size = len(data)
        sample = self.loan(size)
        ctypes.memmove(sample.payload_ptr, data, size)
        sample.assume_init().send()
        self.notify()

    def put_pickled(self, obj: Any) -> None:
        self.put(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))

    def close(self) -> None:
        self.notifier.delete()
        self.publisher.delete()


def await_next(receive: Callable[[], Any], listener: Any, spin: float) -> Any:
    """What ``receive`` returns first that is not None: spin ``spin`` seconds on it, then
    sleep on ``listener`` between tries. A notification collected by a wait may be one
    whose message was already read while spinning: the wait then returns at once and we
    look again."""
    clock = time.perf_counter
    now = clock()
    hot_until, until = now + min(spin, _HOT_SPIN), now + spin
    while now < until:
        item = receive()
        if item is not None:
            return item
        if now > hot_until:
            os.sched_yield()
        now = clock()
    wait, timeout = listener.timed_wait, iox2.Duration.from_secs_f64(_WAIT_SLICE)
    while True:
        item = receive()
        if item is not None:
            return item
        wait(timeout)


class Reader:
    """A channel's receiving end: a subscriber and a listener; ``spin``: see the module."""

    def __init__(self, channel: Channel, spin: float) -> None:
        self.subscriber = channel.pubsub.subscriber_builder().buffer_size(channel.buffer).create()
        self.listener = channel.event.listener_builder().create()
        self.spin = spin
        self.receive = self.subscriber.receive

    def get(self) -> bytes:
        """The next payload, copied out; waits (spin, then the listener) if there is none."""
        sample = self.receive()
        if sample is None:
            sample = self.next_sample()
        return ctypes.string_at(sample.payload_ptr, sample.header.number_of_elements)

    def get_pickled(self) -> Any:
        return pickle.loads(self.get())

    def next_sample(self) -> Any:
        """Wait for a sample: spin, then sleep on the listener (see `await_next`)."""
        return await_next(self.receive, self.listener, self.spin)

    def close(self) -> None:
        self.listener.delete()
        self.subscriber.delete()


def request_response(node: Any, name: str) -> Any:
    """``name``'s request-response service: ``Slice[c_uint8]`` both ways, no overflow."""
    payload = iox2.Slice[ctypes.c_uint8]
    return (
        node.service_builder(service_name(name))
        .request_response(payload, payload)
        .enable_safe_overflow_for_requests(False)
        .enable_safe_overflow_for_responses(False)
        .open_or_create()
    )


def _event(node: Any, name: str) -> Any:
    return node.service_builder(service_name(name)).event().open_or_create()


class Asker:
    """The asking end of ``name``: a client, a notifier of the requests' event service
    (``name``/req) and a listener of the responses' (``name``/resp)."""

    def __init__(self, node: Any, name: str, spin: float) -> None:
        self.service = request_response(node, name)
        self.client = (
            self.service.client_builder()
            .initial_max_slice_len(64)
            .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        self.events = (_event(node, f"{name}/req"), _event(node, f"{name}/resp"))
        self.notifier = self.events[0].notifier_builder().create()
        self.listener = self.events[1].listener_builder().create()
        self.spin = spin

    def ask(self, data: bytes) -> bytes:
        """Send ``data`` as a request, notify, wait for the response; its payload, copied."""
        size = len(data)
        request = self.client.loan_slice_uninit(size)
        ctypes.memmove(request.payload_ptr, data, size)
        pending = request.assume_init().send()
        self.notifier.notify()
        response = pending.receive()
        if response is None:
            response = await_next(pending.receive, self.listener, self.spin)
        return ctypes.string_at(response.payload_ptr, response.header.number_of_elements)

    def close(self) -> None:
        self.listener.delete()
        self.notifier.delete()
        self.client.delete()
        self.service, self.events = None, ()  # a service keeps its node alive


class Answerer:
    """The answering end of ``name``: a server, a listener of the requests' event service
    and a notifier of the responses'."""

    def __init__(self, node: Any, name: str, spin: float) -> None:
        self.service = request_response(node, name)
        self.server = (
            self.service.server_builder()
            .initial_max_slice_len(64)
            .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        self.events = (_event(node, f"{name}/req"), _event(node, f"{name}/resp"))
        self.listener = self.events[0].listener_builder().create()
        self.notifier = self.events[1].notifier_builder().create()
        self.spin = spin

    def answer(self, count: int) -> None:
        """Answer ``count`` requests, each with a copy of its payload (an echo)."""
        receive, listener, notify = self.server.receive, self.listener, self.notifier.notify
        memmove, string_at = ctypes.memmove, ctypes.string_at
        for _ in range(count):
            request = receive()
            if request is None:
                request = await_next(receive, listener, self.spin)
            data = string_at(request.payload_ptr, request.header.number_of_elements)
            size = len(data)
            response = request.loan_slice_uninit(size)
            memmove(response.payload_ptr, data, size)
            response.assume_init().send()
            notify()

    def close(self) -> None:
        self.notifier.delete()
        self.listener.delete()
        self.server.delete()
        self.service, self.events = None, ()  # a service keeps its node alive


@attrs.define
class Ports:
    """A process's node and the ports it opened on it: closed in reverse order.

    The ``name`` its methods take is a service's name within the run: they put the run's
    tag (`Domain`) before it, so every process of the run opens the same services.
    """

    node: Any
    run: str
    closers: list[Callable[[], None]] = attrs.Factory(list)
    channels: dict[str, Channel] = attrs.Factory(dict)

    def channel(self, name: str, buffer: int = BUFFER) -> Channel:
        if name not in self.channels:
            self.channels[name] = Channel(self.node, f"{self.run}/{name}", buffer)
        return self.channels[name]

    def writer(self, name: str, max_len: int = 64, buffer: int = BUFFER) -> Writer:
        writer = Writer(self.channel(name, buffer), max_len)
        self.closers.append(writer.close)
        return writer

    def reader(self, name: str, spin: float, buffer: int = BUFFER) -> Reader:
        reader = Reader(self.channel(name, buffer), spin)
        self.closers.append(reader.close)
        return reader

    def asker(self, name: str, spin: float) -> Asker:
        asker = Asker(self.node, f"{self.run}/{name}", spin)
        self.closers.append(asker.close)
        return asker

    def answerer(self, name: str, spin: float) -> Answerer:
        answerer = Answerer(self.node, f"{self.run}/{name}", spin)
        self.closers.append(answerer.close)
        return answerer

    def close(self) -> None:
        """Delete the ports, then drop the services and the node (they have no delete)."""
        while self.closers:
            self.closers.pop()()
        self.channels.clear()
        self.node = None
        gc.collect()


@contextlib.contextmanager
def ports(domain: Domain) -> Any:
    """A node of ``domain`` for the block, its ports closed and the node dropped after."""
    opened = Ports(domain.node(), domain.run)
    try:
        yield opened
    finally:
        opened.close()


# -- loops (kept flat: a call per message would blur the figures) ------------------------


def send_bytes(writer: Writer, payload: bytes, count: int) -> None:
    loan, notify, memmove, size = writer.loan, writer.notify, ctypes.memmove, len(payload)
    for _ in range(count):
        sample = loan(size)
        memmove(sample.payload_ptr, payload, size)
        sample.assume_init().send()
        notify()


def send_pickled_dicts(writer: Writer, count: int) -> None:
    loan, notify, memmove = writer.loan, writer.notify, ctypes.memmove
    dumps, protocol, value = pickle.dumps, pickle.HIGHEST_PROTOCOL, DICT_VALUE
    for i in range(count):
        data = dumps({"i": i, "v": value}, protocol)
        size = len(data)
        sample = loan(size)
        memmove(sample.payload_ptr, data, size)
        sample.assume_init().send()
        notify()


def drain(reader: Reader, count: int, decode: Callable[[bytes], Any] | None = None) -> None:
    """Receive ``count`` payloads, each copied out (and unpickled if ``decode``)."""
    receive, wait, string_at = reader.receive, reader.next_sample, ctypes.string_at
    for _ in range(count):
        sample = receive()
        if sample is None:
            sample = wait()
        data = string_at(sample.payload_ptr, sample.header.number_of_elements)
        if decode is not None:
            decode(data)


def asks(asker: Asker, payload: bytes, count: int) -> list[float]:
    """Request-response round-trip times."""
    ask, clock = asker.ask, time.perf_counter
    rtts = [0.0] * count
    for k in range(count):
        start = clock()
        ask(payload)
        rtts[k] = clock() - start
    return rtts
