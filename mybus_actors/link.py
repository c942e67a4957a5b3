"""What a gateway knows of one stream it receives: what is done, what it owes the sender.

Pure: no sockets, rings, files or clocks. A stream is one ring on the sending node (see
`items`); its records arrive in runs, maybe again after a reconnect or a restart of
either gateway, maybe with a gap when this side dropped some for want of room. The
gateway asks an `InStream` which records of a run are new (`admit`, `fresh`), tells it
what became of each (`done`, `bounce`, `stall`), and reads back what to tell the sender:
acknowledge up to `ack_due`, re-send what was bounced, rewind to `rewind_due`.

Guarantees:

- A record is taken once: it is new only if it ends past `taken`, the end of the last
  record accepted (delivered, or waiting here for room: `hwm` is the end of the last
  one done), and both only move forward.
- Nothing is taken out of order: a run that begins beyond `hwm` is refused (a gap: this
  side dropped records, or the peer skipped some), unless the sender's ring was released
  up to that start, which means the sender gave the records in between up (it told
  their senders; this side never saw them): then `hwm` jumps there.
- A record that could not be delivered (no such actor, refused) counts as done, and is
  bounced again each time the sender sends it again, until the sender's release shows
  it saw the bounce; records that found the target full are dropped from that one on,
  to be asked for again (`rewind_due`) once there is room.
- A large message arrives as FIRST / MIDDLE / LAST records; `Large` follows the one in
  progress, so a fragment that does not continue it is recognised.

`hwm` is None until the first run: a receiver that restarted takes the stream from
wherever the sender stands (the sender resends from its head, the last position this
side acknowledged; the receiving runtime drops a record it already has).
"""

from __future__ import annotations

from typing import Final

import attrs

from mybus_actors.errors import RemoteProtocolError
from mybus_actors.items import FIRST, LAST, Record, fragment_identity, record_type

__all__ = ["MAX_MESSAGE", "InStream", "Large"]

MAX_MESSAGE: Final = 1 << 40  # what a peer may announce for one large message


@attrs.define
class Large:
    """The large message being assembled: its FIRST's end, its total, its meta, and how
    many of its bytes have arrived."""

    first_end: int
    total: int
    meta: int
    received: int


@attrs.define
class InStream:
    """The receiving side's state for one stream (one ring on the peer's node)."""

    hwm: int | None = None
    taken: int | None = None  # >= hwm: what is past hwm waits here, in order
    acked: int | None = None
    dropping: bool = False  # records past hwm were dropped: take only their resend
    rewind_sent: bool = False
    bounced: dict[int, str] = attrs.field(factory=dict)  # record end -> reason
    large: Large | None = None
    skipping: int | None = None  # FIRST end of a large message whose rest is dropped

    # -- a run arrives ------------------------------------------------------------------

    def admit(self, start: int, released: int) -> bool:
        """Whether the records of a run that begins at ``start`` may be looked at now.

        The sender's ``released`` position tells a gap it made (it gave records up) from
        one this side made (it dropped records, and asked for them again).
        """
        for end in [e for e in self.bounced if e - released <= 0]:
            del self.bounced[end]  # the sender released it: it has seen the bounce
        if self.hwm is None or self.taken is None:
            self.hwm = self.taken = start
            return True
        if self.dropping:
            if start - self.taken > 0:
                return False  # still what followed the records dropped: they come again
            self.dropping = False
            self.rewind_sent = False
        if start - self.taken > 0:
            if released - start < 0:
                self.stall()  # we lost some: ask for them
                return False
            # The sender released up to here without our word: it gave those up, and
            # any large message they belonged to with them.
            self.hwm = self.taken = start
            self.large = None
            self.skipping = None
        return True

    def fresh(self, end: int) -> bool:
        """Whether the record ending at ``end`` is new (not taken before)."""
        return self.taken is not None and end - self.taken > 0

    def take(self, end: int) -> None:
        """The record is accepted: delivered now, or waiting here in order."""
        assert self.taken is not None and end - self.taken > 0
        self.taken = end

    def rebounce(self, end: int) -> str | None:
        """The reason a record sent again was bounced, to tell the sender again."""
        return self.bounced.get(end)

    # -- what became of a record -----------------------------------------------------------

    def done(self, end: int) -> None:
        """The record is delivered (or safely held: a fragment written to its file)."""
        assert self.hwm is not None and end - self.hwm > 0
        self.hwm = end
        if self.taken is None or end - self.taken > 0:
            self.taken = end

    def bounce(self, end: int, reason: str) -> None:
        """The record could not be delivered: done, and the sender is to be told."""
        self.done(end)
        self.bounced[end] = reason

    def stall(self) -> None:
        """This record and what follows are dropped (no room to hold them), to be asked
        for again (`rewind_due`, from wherever `hwm` stands then) when there is room."""
        if not self.dropping:
            self.dropping = True
            self.rewind_sent = False

    # -- large messages ----------------------------------------------------------------

    def fragment(self, record: Record) -> str:
        """Where a fragment record stands: "first" (a new large message), "next" (it
        continues the one in progress), "skip" (part of one being dropped), or "unknown"
        (a MIDDLE or LAST of a message this side has no trace of, e.g. after a restart:
        the caller looks for the file it may have left, and calls `resume`).

        Raises:
            RemoteProtocolError: a fragment that contradicts the message in progress.
        """
        end, header, payload = record
        first, value = fragment_identity(header, payload)
        if record_type(header) == FIRST:
            if value > MAX_MESSAGE or len(payload) - 8 > value:
                raise RemoteProtocolError(f"large message at {end} claims {value} bytes")
            if self.large is not None:
                raise RemoteProtocolError(
                    f"a large message begins at {end} inside the one begun at"
                    f" {self.large.first_end}"
                )
            self.skipping = None
            return "first"
        if self.skipping is not None and first == self.skipping:
            if record_type(header) == LAST:
                self.skipping = None
            return "skip"
        large = self.large
        if large is None or large.first_end != first:
            return "unknown"
        if value != large.received:
            raise RemoteProtocolError(
                f"fragment of message {first} at offset {value}, expected {large.received}"
            )
        if large.received + len(payload) - 16 > large.total:
            raise RemoteProtocolError(f"message {first} is longer than announced")
        return "next"

    def begin_large(self, end: int, total: int, meta: int, received: int) -> None:
        self.large = Large(end, total, meta, received)

    def end_large(self) -> None:
        self.large = None

    def resume(self, first_end: int, total: int, meta: int, offset: int) -> None:
        """Take up a large message this side started before it restarted."""
        self.large = Large(first_end, total, meta, offset)

    def skip(self, first_end: int, last: bool) -> None:
        """Drop the rest of the large message that began at ``first_end``."""
        self.large = None
        self.skipping = None if last else first_end

    # -- what to tell the sender -------------------------------------------------------

    def ack_due(self) -> int | None:
        """The position to acknowledge, if it moved since the last acknowledgement."""
        if self.hwm is None or self.hwm == self.acked:
            return None
        return self.hwm

    def acked_to(self, pos: int) -> None:
        self.acked = pos

    def rewind_due(self) -> int | None:
        """Where the sender should send again from, once (call when there is room): the
        end of the last record taken (what was dropped came after it)."""
        if not self.dropping or self.rewind_sent or self.taken is None:
            return None
        self.rewind_sent = True
        return self.taken

    def forget_waiting(self) -> None:
        """What waited here is gone (not delivered, never acknowledged): take it again."""
        self.taken = self.hwm
