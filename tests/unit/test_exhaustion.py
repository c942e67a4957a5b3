"""Exhaustion as a named error, payloads that misbehave while loading, and the files
under a mailbox (a ring file, doorbells), each tested on its own in this process."""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from pathlib import Path

import pytest

from mybus_actors import codec
from mybus_actors.doorbell import Bells, Doorbell
from mybus_actors.errors import MyBusError, ResourceExhausted, RingCorrupted, SerializationError
from mybus_actors.pressure import OnceLog, exhausted, is_exhaustion
from mybus_actors.ringfile import RingFile


class _ExitsWhenLoaded:
    def __reduce__(self) -> tuple[object, ...]:
        return (sys.exit, (3,))


class _InterruptsWhenLoaded:
    def __reduce__(self) -> tuple[object, ...]:
        return (_interrupt, ())


def _interrupt() -> None:
    raise KeyboardInterrupt


# -- pressure ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.ENOMEM])
def test_exhaustion_errnos_become_resource_exhausted_naming_the_call(code: int) -> None:
    err = exhausted(OSError(code, os.strerror(code)), "create ring file x")
    assert isinstance(err, ResourceExhausted)
    assert isinstance(err, MyBusError) and isinstance(err, OSError)
    assert err.errno == code
    assert "cannot create ring file x" in str(err)
    assert is_exhaustion(err) and is_exhaustion(OSError(code, "x"))


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EACCES, errno.ELOOP, errno.ENXIO])
def test_other_errors_are_not_exhaustion(code: int) -> None:
    assert exhausted(OSError(code, os.strerror(code)), "open x") is None
    assert not is_exhaustion(OSError(code, "x"))


def test_once_log_warns_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    log = OnceLog(logging.getLogger("test.pressure"), "sending")
    with caplog.at_level(logging.DEBUG, logger="test.pressure"):
        for _ in range(100):
            log.failed(ResourceExhausted(errno.EMFILE, "no fd"))
        log.ok()
        log.ok()
        log.failed(ResourceExhausted(errno.EMFILE, "no fd"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per episode
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "sending: works again"
    ]
    assert log.count == 101


# -- decoding contains what a payload does while loading --------------------------------


def test_a_payload_calling_sys_exit_while_loading_is_a_serialization_error() -> None:
    meta, body = codec.encode(_ExitsWhenLoaded())
    with pytest.raises(SerializationError, match="SystemExit"):
        codec.decode_message(meta, body)
    meta, body = codec.encode(_ExitsWhenLoaded(), kind=codec.Kind.ASK, correlation_id=5)
    with pytest.raises(SerializationError, match="SystemExit"):
        codec.decode(meta, body)
    assert codec.peek(meta, body)[::2] == (codec.Kind.ASK, 5)  # the envelope still reads


def test_keyboard_interrupt_passes_in_the_main_thread_only() -> None:
    meta, body = codec.encode(_InterruptsWhenLoaded())
    with pytest.raises(KeyboardInterrupt):
        codec.decode_message(meta, body)
    caught: list[BaseException] = []

    def elsewhere() -> None:
        try:
            codec.decode_message(meta, body)
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join(10)
    assert len(caught) == 1 and isinstance(caught[0], SerializationError)


# -- ring files ----------------------------------------------------------------------------


def test_a_ring_file_is_allocated_whole_and_checked_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "a~b.1"
    made = RingFile.create(path, 1 << 16)
    try:
        st = os.stat(path)
        assert st.st_size == made.size
        assert st.st_blocks * 512 >= made.size  # allocated, not sparse
        with pytest.raises(FileExistsError):
            RingFile.create(path, 1 << 16)
        opened = RingFile.open(path)
        assert opened.size == made.size and opened.intact()
        os.truncate(path, 100)  # what another process may do
        assert not made.intact() and not opened.intact()  # told, without a page touched
        opened.close(None)
        with pytest.raises(RingCorrupted, match="truncated"):
            RingFile.open(path)
    finally:
        made.close(None)
        made.unlink()


def test_a_ring_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "a~b.2"
    os.mkfifo(fifo)
    with pytest.raises(RingCorrupted, match="not a regular file"):
        RingFile.open(fifo)
    with pytest.raises(FileNotFoundError):
        RingFile.open(tmp_path / "a~b.3")


# -- doorbells -----------------------------------------------------------------------------


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_doorbell_descriptor_closes_with_the_last_ring_that_holds_it(tmp_path: Path) -> None:
    bell = Doorbell(tmp_path / "bell")
    bells = Bells()
    try:
        path = str(bell.path)
        before = _fds()
        bells.acquire(path)
        bells.acquire(path)  # two rings to the same process
        bells.write(path, b"w")
        assert len(bells) == 1 and _fds() == before + 1
        bells.release(path)
        bells.write(path, b"w")
        assert len(bells) == 1  # one ring still rings it
        bells.release(path)
        assert len(bells) == 0 and _fds() == before  # closed with the last
        bells.write(path, b"n")  # a one-off write keeps nothing open
        assert len(bells) == 0 and _fds() == before
        assert b"".join(bell.drain()) == b"wwn"
        assert bell.drain() == []
    finally:
        bells.close()
        bell.close()
    assert not bell.path.exists()

