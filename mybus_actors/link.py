"""One gateway's state for the link to one peer gateway: numbering, acks, resends, fragments.

Pure: no sockets, no clock, no asyncio. The gateway feeds it what local actors send to
the peer (`Outbox.put`), asks it for DATA frames to write (`Outbox.next_frame`), and
hands it what the peer sends (`Inbox.accept`). The state outlives any one TCP connection:

- DATA frames are numbered per link; a frame stays in `Outbox.unacked` until the peer's
  cumulative ACK covers it, and `Outbox.resend` replays those after a reconnect.
- `Inbox.accept` drops a frame whose number it has already accepted, so a resent frame
  is delivered once; a gap means frames were lost mid-connection and is refused.
- A message above `large` bytes is cut into FIRST/MORE chunks; each frame carries the
  queued small messages first and at most one chunk, so a 100 MiB message never holds
  a 64 B one behind it for more than one chunk's time.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Final, NamedTuple

from mybus_actors.errors import RemoteProtocolError
from mybus_actors.wire import DATA_OVERHEAD, First, Item, More, Whole, item_size

__all__ = ["Inbox", "Message", "Outbox"]

DEFAULT_FRAME_BYTES: Final = 256 << 10
DEFAULT_CHUNK: Final = 64 << 10
DEFAULT_LARGE: Final = 256 << 10
MAX_MESSAGE: Final = 1 << 34  # what a peer may announce for one reassembled message


class Message(NamedTuple):
    """A whole message crossing the link: for actor ``to`` on the receiving node."""

    to: str
    meta: int
    payload: bytes | memoryview


class _Large:
    __slots__ = ("meta", "msg_id", "offset", "payload", "to", "unacked")

    def __init__(self, msg_id: int, to: str, meta: int, payload: bytes | memoryview) -> None:
        self.msg_id = msg_id
        self.to = to
        self.meta = meta
        self.payload = memoryview(payload)
        self.offset = 0
        self.unacked = 0  # chunks sent and not yet acknowledged


class Outbox:
    """What we send on one link. Not thread-safe (the gateway's loop owns it)."""

    def __init__(
        self,
        *,
        frame_bytes: int = DEFAULT_FRAME_BYTES,
        chunk: int = DEFAULT_CHUNK,
        large: int = DEFAULT_LARGE,
    ) -> None:
        if not 0 < chunk <= frame_bytes:
            raise ValueError(f"chunk must be in (0, frame_bytes], got {chunk!r}")
        self.frame_bytes = frame_bytes
        self.chunk = chunk
        self.large = large
        self.next_seq = 1
        self.unacked: OrderedDict[int, tuple[Item, ...]] = OrderedDict()
        self.unacked_bytes = 0
        self._small: deque[Whole] = deque()
        self._small_bytes = 0
        self._large: deque[_Large] = deque()
        self._next_msg_id = 1
        # Large messages some of whose chunks are unacked: kept whole for dead letters.
        self._in_flight: dict[int, _Large] = {}

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be framed (not counting what is sent and unacked)."""
        return self._small_bytes + sum(len(m.payload) - m.offset for m in self._large)

    def pending(self) -> bool:
        """Something is waiting to be framed."""
        return bool(self._small or self._large)

    def put(self, to: str, meta: int, payload: bytes | memoryview) -> None:
        if len(payload) > self.large:
            self._large.append(_Large(self._next_msg_id, to, meta, payload))
            self._next_msg_id += 1
        else:
            item = Whole(to, meta, bytes(payload))
            self._small.append(item)
            self._small_bytes += len(payload)

    def next_frame(self) -> tuple[int, tuple[Item, ...]] | None:
        """The next DATA frame's (seq, items), now counted as sent and unacked."""
        if not self.pending():
            return None
        items: list[Item] = []
        room = self.frame_bytes - DATA_OVERHEAD
        small = self._small
        while small and (not items or item_size(small[0]) <= room):
            item = small.popleft()
            self._small_bytes -= len(item.payload)
            room -= item_size(item)
            items.append(item)
        if self._large and room > 0:
            items.append(self._next_chunk(max(room, 1)))
        seq = self.next_seq
        self.next_seq += 1
        frame = tuple(items)
        self.unacked[seq] = frame
        self.unacked_bytes += sum(item_size(i) for i in frame)
        return seq, frame

    def _next_chunk(self, room: int) -> Item:
        msg = self._large[0]
        size = min(self.chunk, room, len(msg.payload) - msg.offset)
        chunk = bytes(msg.payload[msg.offset : msg.offset + size])
        item: Item
        if msg.offset == 0:
            item = First(msg.msg_id, len(msg.payload), msg.to, msg.meta, chunk)
            self._in_flight[msg.msg_id] = msg
        else:
            item = More(msg.msg_id, chunk)
        msg.unacked += 1
        msg.offset += size
        if msg.offset >= len(msg.payload):
            self._large.popleft()
        return item

    def ack(self, seq: int) -> int:
        """The peer has every frame up to ``seq``; return how many frames that freed."""
        freed = 0
        while self.unacked:
            first = next(iter(self.unacked))
            if first > seq:
                break
            items = self.unacked.pop(first)
            self.unacked_bytes -= sum(item_size(i) for i in items)
            freed += 1
            for item in items:
                if isinstance(item, First | More):
                    msg = self._in_flight.get(item.msg_id)
                    if msg is not None:
                        msg.unacked -= 1
                        if msg.unacked == 0 and msg.offset >= len(msg.payload):
                            del self._in_flight[item.msg_id]
        return freed

    def resend(self) -> list[tuple[int, tuple[Item, ...]]]:
        """Every unacked frame, oldest first: what a new connection replays."""
        return list(self.unacked.items())

    def give_up(self) -> list[Message]:
        """Empty the link: every message not known to be delivered, whole, in order.

        For a peer unreachable past its grace: its senders get these back as dead
        letters. (An unacked message may in fact have arrived; the ack was lost.)
        """
        out: list[Message] = []
        seen_large: set[int] = set()
        for frame in self.unacked.values():
            for item in frame:
                if isinstance(item, Whole):
                    out.append(Message(item.to, item.meta, item.payload))
                elif isinstance(item, First) and item.msg_id in self._in_flight:
                    msg = self._in_flight[item.msg_id]
                    seen_large.add(item.msg_id)
                    out.append(Message(msg.to, msg.meta, msg.payload))
        for item in self._small:
            out.append(Message(item.to, item.meta, item.payload))
        for msg in self._large:
            if msg.msg_id not in seen_large:
                out.append(Message(msg.to, msg.meta, msg.payload))
        self.unacked.clear()
        self.unacked_bytes = 0
        self._small.clear()
        self._small_bytes = 0
        self._large.clear()
        self._in_flight.clear()
        return out


class _Partial:
    __slots__ = ("buf", "meta", "to", "total")

    def __init__(self, to: str, meta: int, total: int) -> None:
        self.to = to
        self.meta = meta
        self.total = total
        self.buf = bytearray()


class Inbox:
    """What we receive on one link: duplicates dropped, fragments reassembled."""

    def __init__(self) -> None:
        self.last_seq = 0
        self._partial: dict[int, _Partial] = {}

    def reset(self) -> None:
        """The peer restarted (a new incarnation): its numbering starts over."""
        self.last_seq = 0
        self._partial.clear()

    def accept(self, seq: int, items: tuple[Item, ...]) -> list[Message] | None:
        """Take one DATA frame; None when it is a duplicate (already accepted).

        Returns:
            The messages it completed, in order.

        Raises:
            RemoteProtocolError: a gap in the numbering, or inconsistent fragments.
        """
        if seq <= self.last_seq:
            return None
        # A fresh inbox takes the peer's numbering from wherever it stands (its first
        # frames may have gone to our previous incarnation); after that, no gaps.
        if self.last_seq and seq != self.last_seq + 1:
            raise RemoteProtocolError(f"DATA frame {seq} after {self.last_seq}: frames lost")
        out: list[Message] = []
        for item in items:
            if isinstance(item, Whole):
                out.append(Message(item.to, item.meta, item.payload))
            elif isinstance(item, First):
                if item.msg_id in self._partial or item.total > MAX_MESSAGE:
                    raise RemoteProtocolError(f"bad FIRST fragment for message {item.msg_id}")
                part = _Partial(item.to, item.meta, item.total)
                self._partial[item.msg_id] = part
                self._append(item.msg_id, part, item.chunk, out)
            else:
                part_or_none = self._partial.get(item.msg_id)
                if part_or_none is None:
                    raise RemoteProtocolError(f"MORE fragment of unknown message {item.msg_id}")
                self._append(item.msg_id, part_or_none, item.chunk, out)
        self.last_seq = seq
        return out

    def _append(self, msg_id: int, part: _Partial, chunk: bytes, out: list[Message]) -> None:
        part.buf += chunk
        if len(part.buf) > part.total:
            raise RemoteProtocolError(f"message {msg_id} is longer than announced")
        if len(part.buf) == part.total:
            del self._partial[msg_id]
            out.append(Message(part.to, part.meta, bytes(part.buf)))
