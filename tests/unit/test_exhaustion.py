"""Exhaustion as a named error, payloads that misbehave while loading, and the files
under a mailbox (a ring file, doorbells), each tested on its own in this process."""

from __future__ import annotations

import errno
import logging
import os

import pytest

from mybus_actors.errors import MyBusError, ResourceExhausted
from mybus_actors.pressure import OnceLog, exhausted, is_exhaustion

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


# -- ring files ----------------------------------------------------------------------------


# -- doorbells -----------------------------------------------------------------------------


