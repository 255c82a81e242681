"""
What goes through a `.Channel`, and what its producer calls answer.

The ops, in the order the producer made them:

- ``bytes``: a ``write``. Joined with its neighbours on the loop, never one loop wake-up each.
- `FLUSH`: a ``flush()`` the producer asked for before a call or the end.
- `Call`: any other response method; the producer waits for its result.
- `End`: the producer is done (with its exception, if it raised).
- `.FileRange`: a range of a file, sent without reading it (see `._sendfile`); it holds the
  whole budget until the consumer has sent it.
- `Item`: something a consumer other than the response's carries out (a WebSocket message,
  see `.._websocket._handler`), queued with `.Channel.offer`, which never lets it exceed
  the budget.

`Offer` and `Put` are what `.Channel.offer` and `.Channel.put` answer.
"""

from __future__ import annotations

import concurrent.futures
import enum
from typing import Any, Union

from ._sendfile import FileRange

__all__ = ("FLUSH", "Call", "End", "Item", "Offer", "Op", "Put")


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: A flush the producer asked for, placed before a `Call` or the `End` it must precede.
FLUSH = _Marker("FLUSH")


class Call:
    """A response method call, carried out on the loop; ``future`` gets its outcome."""

    __slots__ = ("args", "future", "kwargs", "name")

    def __init__(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def __repr__(self) -> str:
        return f"<Call {self.name}()>"


class End:
    """The producer is done; ``error`` is what it raised, if anything."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"<End error={self.error!r}>"


class Item:
    """
    Base of what a consumer other than the response's carries out (`Channel.offer`).

    ``nbytes`` count against the budget from `Channel.offer` until the consumer's
    `Channel.sent`. Immutable once offered: the same item may be offered to many channels.
    """

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


Op = Union[bytes, Call, End, _Marker, FileRange, Item]


class Offer(enum.Enum):
    """The outcome of `Channel.offer`."""

    QUEUED = "queued"  #: queued; the consumer is awake and will see it
    WAKE = "wake"  #: queued; the consumer is idle: wake it (`Channel.wake_soon`, or `wake`)
    FULL = "full"  #: not queued: it does not fit in the budget (in time)


class Put(enum.Enum):
    """What a generator producer should do after `Channel.put`."""

    MORE = "more"  #: pull the next chunk
    FULL = "full"  #: the budget is used up: stop pulling, then `Channel.park`
    CLOSED = "closed"  #: the stream is closed: close the generator
