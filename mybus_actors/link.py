"""One gateway's state for the link to one peer gateway: numbering, acks, resends, fragments.

Pure: no sockets, no clock, no asyncio. The gateway feeds it what local actors send to
the peer (`Outbox.put`), asks it for DATA frames to write (`Outbox.next_frame`), and
hands it what the peer sends (`Inbox.accept`). The state outlives any one TCP connection:

- DATA frames are numbered per link; a frame stays in `Outbox.unacked` until the peer's
  cumulative ACK covers it, and `Outbox.resend` replays those after a reconnect.
- `Inbox.accept` drops a frame whose number it has already accepted, so a resent frame
  is delivered once; a gap means frames were lost mid-connection and is refused.
- A message above `large` bytes is cut into FIRST/MORE chunks; each frame carries the
  queued small messages first and at most one chunk (its last item), so a 100 MiB
  message never holds a 64 B one behind it for more than one chunk's time.
- A part of a large message never outlives the connection that carried it: the `Inbox`
  drops what it holds when the connection closes (`Inbox.connection_lost`), and
  `Outbox.resend` starts every large message not yet wholly acknowledged again from its
  first chunk, under the same id. The inbox remembers the last large message it
  completed, so one that arrived whole before its acknowledgement was lost is skipped.
  Small messages for an actor wait while a large one for it is unacknowledged, so a
  restart never lets them overtake it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Final, NamedTuple

from mybus_actors.errors import RemoteProtocolError
from mybus_actors.wire import DATA_OVERHEAD, First, Item, More, Whole, decode_item, encode_item

__all__ = ["Frame", "Inbox", "Message", "Outbox"]

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
    __slots__ = ("meta", "msg_id", "offset", "order", "payload", "to", "unacked")

    def __init__(
        self, msg_id: int, to: str, meta: int, payload: bytes | memoryview, order: int
    ) -> None:
        self.msg_id = msg_id
        self.order = order  # place in the queue among small messages too
        self.to = to
        self.meta = meta
        self.payload = memoryview(payload)
        self.offset = 0
        self.unacked = 0  # chunks sent and not yet acknowledged


class Frame(NamedTuple):
    """A DATA frame's contents, its items already encoded (`wire.encode_item`)."""

    seq: int
    items: tuple[bytes, ...]
    size: int
    chunks_of: tuple[int, ...]  # large messages it carries a chunk of


class Outbox:
    """What we send on one link. Not thread-safe (the gateway's loop owns it).

    Items are encoded once, when queued: a resend after a reconnect sends the same bytes.
    """

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
        self.unacked: OrderedDict[int, Frame] = OrderedDict()
        self.unacked_bytes = 0
        # (order, target, encoded WHOLE item): the target, so that a small message does
        # not overtake a large one queued earlier for the same actor.
        self._small: deque[tuple[int, bytes, bytes]] = deque()
        self._order = 0
        self._small_bytes = 0
        self._large: deque[_Large] = deque()
        self._next_msg_id = 1
        # Large messages some of whose chunks are unacked: kept whole for give_up.
        self._in_flight: dict[int, _Large] = {}

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be framed (not counting what is sent and unacked)."""
        return self._small_bytes + sum(len(m.payload) - m.offset for m in self._large)

    def pending(self) -> bool:
        """Something is waiting to be framed."""
        return bool(self._small or self._large)

    def put(self, to: str, meta: int, payload: bytes | memoryview) -> None:
        """Queue a message for actor ``to`` on the peer's node.

        Raises:
            LocalProtocolError: ``to`` is not a valid name, or ``meta`` not a u32.
        """
        if len(payload) > self.large:
            self._order += 1
            self._large.append(_Large(self._next_msg_id, to, meta, payload, self._order))
            self._next_msg_id += 1
            return
        data = payload if isinstance(payload, bytes) else bytes(payload)
        self.put_encoded(encode_item(Whole(to, meta, data)))

    def put_encoded(self, item: bytes) -> None:
        """Queue a WHOLE item already encoded (a relay passes on what it was given)."""
        self._order += 1
        self._small.append((self._order, item[2 : 2 + item[1]], item))
        self._small_bytes += len(item)

    def next_frame(self) -> Frame | None:
        """The next DATA frame, now counted as sent and unacked."""
        if not self.pending():
            return None
        items: list[bytes] = []
        room = self.frame_bytes - DATA_OVERHEAD
        small = self._small
        if not self._large and not self._in_flight:
            while small and (not items or len(small[0][2]) <= room):
                encoded = small.popleft()[2]
                self._small_bytes -= len(encoded)
                room -= len(encoded)
                items.append(encoded)
        else:
            room = self._take_around_large(items, room)
        chunks_of: tuple[int, ...] = ()
        if self._large and not self._large_waits():
            chunk = self._next_chunk(room)
            if chunk is not None:
                items.append(chunk[1])
                chunks_of = (chunk[0],)
        if not items:  # cannot happen (something queued can always go): never spin on it
            return None
        frame = Frame(self.next_seq, tuple(items), sum(map(len, items)), chunks_of)
        self.next_seq += 1
        self.unacked[frame.seq] = frame
        self.unacked_bytes += frame.size
        return frame

    def _held_targets(self) -> dict[bytes, int]:
        """Actors with a large message queued or unacknowledged: the order of the first."""
        held: dict[bytes, int] = {}
        for msg in sorted((*self._in_flight.values(), *self._large), key=lambda m: m.order):
            held.setdefault(msg.to.encode("ascii"), msg.order)
        return held

    def _large_waits(self) -> bool:
        """The next large message must wait: a small one for the same actor, queued
        before it, is still unframed (it would otherwise arrive after the large one)."""
        head = self._large[0]
        to = head.to.encode("ascii")
        return any(order < head.order and t == to for order, t, _ in self._small)

    def _take_around_large(self, items: list[bytes], room: int) -> int:
        """Frame small messages past queued large ones, but never past one for the same
        actor queued before them: order per (sender, receiver) holds end to end."""
        held = self._held_targets()
        kept: deque[tuple[int, bytes, bytes]] = deque()
        stopped: set[bytes] = set()  # targets with a message kept back: keep the rest too
        small = self._small
        while small:
            entry = small.popleft()
            order, to, encoded = entry
            first_large = held.get(to)
            if items and len(encoded) > room:
                kept.append(entry)
                kept.extend(small)
                small.clear()
                break
            if to in stopped or (first_large is not None and first_large < order):
                stopped.add(to)
                kept.append(entry)
                continue
            self._small_bytes -= len(encoded)
            room -= len(encoded)
            items.append(encoded)
        self._small = kept
        return room

    def _next_chunk(self, room: int) -> tuple[int, bytes] | None:
        """The head large message's next chunk as an item of at most ``room`` bytes."""
        msg = self._large[0]
        # The item's own fields count against the room too (see wire's FIRST and MORE).
        overhead = 1 + 8 + 8 + 1 + len(msg.to) + 4 + 4 if msg.offset == 0 else 1 + 8 + 4
        size = min(self.chunk, room - overhead, len(msg.payload) - msg.offset)
        if size < 1:
            return None
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
        return msg.msg_id, encode_item(item)

    def ack(self, seq: int) -> int:
        """The peer has every frame up to ``seq``; return how many frames that freed."""
        freed = 0
        while self.unacked:
            first = next(iter(self.unacked))
            if first > seq:
                break
            frame = self.unacked.pop(first)
            self.unacked_bytes -= frame.size
            freed += 1
            for msg_id in frame.chunks_of:
                msg = self._in_flight.get(msg_id)
                if msg is not None:
                    msg.unacked -= 1
                    if msg.unacked == 0 and msg.offset >= len(msg.payload):
                        del self._in_flight[msg_id]
        return freed

    def resend(self) -> list[Frame]:
        """Every unacked frame, oldest first: what a new connection replays.

        The peer dropped its part of any large message when the old connection closed,
        so every large message not wholly acknowledged goes back to the front of the
        queue, to be sent again from its first chunk; its chunks come out of these
        frames (a frame left empty is still sent: it keeps the numbering whole).
        """
        restart = sorted(self._in_flight.values(), key=lambda m: m.order)
        if restart:
            again = {m.msg_id for m in restart}
            for msg in restart:
                msg.offset = msg.unacked = 0
            self._large = deque([*restart, *(m for m in self._large if m.msg_id not in again)])
            self._in_flight.clear()
            for seq, frame in self.unacked.items():
                if frame.chunks_of:  # its chunk is its last item
                    kept = frame.items[:-1]
                    size = sum(map(len, kept))
                    self.unacked_bytes -= frame.size - size
                    self.unacked[seq] = Frame(seq, kept, size, ())
        return list(self.unacked.values())

    def give_up(self) -> list[Message]:
        """Empty the link: every message not known to be delivered, whole, in order.

        For a peer unreachable past its grace: its senders get these back as dead
        letters. (An unacked message may in fact have arrived; the ack was lost.)
        """
        out: list[Message] = []
        seen_large: set[int] = set()
        for frame in self.unacked.values():
            for encoded in frame.items:
                item = decode_item(encoded)
                if isinstance(item, Whole):
                    out.append(Message(item.to, item.meta, item.payload))
            for msg_id in frame.chunks_of:
                msg = self._in_flight.get(msg_id)
                if msg is not None and msg_id not in seen_large:
                    seen_large.add(msg_id)
                    out.append(Message(msg.to, msg.meta, msg.payload))
        for _, _, encoded in self._small:
            item = decode_item(encoded)
            if isinstance(item, Whole):
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
    __slots__ = ("buf", "meta", "skip", "skipped", "to", "total")

    def __init__(self, to: str, meta: int, total: int, *, skip: bool = False) -> None:
        self.to = to
        self.meta = meta
        self.total = total
        self.buf = bytearray()
        self.skip = skip  # a resent message that arrived whole before: count, keep nothing
        self.skipped = 0


class Inbox:
    """What we receive on one link: duplicates dropped, fragments reassembled."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.last_large = 0  # id of the last large message completed
        self._partial: dict[int, _Partial] = {}

    @property
    def partial_bytes(self) -> int:
        """Bytes held for large messages not yet complete."""
        return sum(len(p.buf) for p in self._partial.values())

    def reset(self) -> None:
        """The peer restarted (a new incarnation): its numbering starts over."""
        self.last_seq = 0
        self.last_large = 0
        self._partial.clear()

    def connection_lost(self) -> None:
        """The connection closed: drop every part of a large message (the peer sends
        each again from its first chunk on the next connection)."""
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
                skip = item.msg_id <= self.last_large
                part = _Partial(item.to, item.meta, item.total, skip=skip)
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
        if part.skip:
            part.skipped += len(chunk)
            got = part.skipped
        else:
            part.buf += chunk
            got = len(part.buf)
        if got > part.total:
            raise RemoteProtocolError(f"message {msg_id} is longer than announced")
        if got == part.total:
            del self._partial[msg_id]
            if not part.skip:
                self.last_large = max(self.last_large, msg_id)
                out.append(Message(part.to, part.meta, bytes(part.buf)))
