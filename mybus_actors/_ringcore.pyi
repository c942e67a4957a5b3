# The native ring core's types are ring.py's, method for method: see ringcore.py, which
# hands them out typed as ring.Producer, ring.Consumer and ring.Reader.
from collections.abc import Callable
from typing import Any

from mybus_actors.ring import Consumer as Consumer
from mybus_actors.ring import Producer as Producer
from mybus_actors.ring import Reader as Reader

VERSION: int

# The hot calls' common cases in C, each in front of the Python function it stands for
# (outbound.Outbound.fast_send and codec.encode build them).
class Sender:
    def __init__(
        self,
        chan_type: type,
        chans: dict[tuple[str, str], object],
        slow: Callable[..., None],
        after_write: Callable[..., None],
        maintain: Callable[[], None],
        timeout: float,
    ) -> None: ...
    def __call__(
        self,
        sender: str,
        to: str,
        data: Any,
        meta: int = 0,
        *,
        timeout: float = ...,
        block: bool = ...,
    ) -> None: ...

class Encoder:
    def __init__(
        self,
        slow: Callable[..., tuple[int, Any]],
        dumps: Callable[[object, int], bytes],
        protocol: int,
        pickle_meta: int,
        prefix: Callable[[str], bytes] | None = None,
        has_correlation: int = 0,
        has_sender: int = 0,
        kinds: int = 0,
        correlated: int = 0,
    ) -> None: ...
    def __call__(
        self,
        message: object,
        *,
        kind: int = ...,
        sender: str | None = ...,
        correlation_id: int = ...,
    ) -> tuple[int, Any]: ...

class FieldsDecoder:
    def __init__(
        self,
        slow: Callable[[int, Any], tuple[int, str | None, int, object]],
        loads: Callable[[Any], object],
        failed: Callable[[int, Any, BaseException], object],
        kinds: tuple[Any, ...],
        pickle_tags: int,
        has_correlation: int,
        has_sender: int,
    ) -> None: ...
    def __call__(self, meta: int, body: Any) -> tuple[int, str | None, int, object]: ...

class Teller:
    def __init__(
        self,
        slow: Callable[..., None],
        routes: dict[str, tuple[str, str]],
        cells: dict[str, Any],
        node: str,
        encode: Callable[..., tuple[int, Any]],
        send: Callable[..., None],
        *,
        forwards: dict[str, str] | None = None,
    ) -> None: ...
    def __call__(self, sender: str, to: str, message: object) -> None: ...

def strip_run(
    items: Any, index: int, stream: int, last: int, out: list[tuple[int, Any]]
) -> tuple[int, int]: ...
