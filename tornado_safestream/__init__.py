"""
Stream a Tornado response from a thread pool, safely.

Tornado's `~tornado.web.RequestHandler` may only be used on its IOLoop's thread. With
`SafeStreamMixin` and `stream_on_executor`, a handler method runs in an executor and
writes (push style) or yields (generator style) its response there, while every
``write``/``flush`` is done on the loop, in order, with backpressure.

`SafeWebSocketMixin` and `broadcast` do the same for WebSocket messages: any thread may
send, in order, with a bounded queue per connection and a policy for slow clients.

Assertion mode (`enable_thread_assertions`, `thread_assertions`, and the ``safestream``
pytest plugin) makes any call to Tornado from the wrong thread raise `WrongThreadError`.
"""

from __future__ import annotations

__all__ = (
    "BroadcastResult",
    "SafeStaticFileHandler",
    "SafeStreamMixin",
    "SafeWebSocketMixin",
    "WrongThreadError",
    "__version__",
    "broadcast",
    "disable_thread_assertions",
    "enable_thread_assertions",
    "receive_on_executor",
    "stream_on_executor",
    "thread_assertions",
)

from ._assertions import disable_thread_assertions as disable_thread_assertions
from ._assertions import enable_thread_assertions as enable_thread_assertions
from ._assertions import thread_assertions as thread_assertions
from ._errors import WrongThreadError as WrongThreadError
from ._http._decorator import stream_on_executor as stream_on_executor
from ._http._mixin import SafeStreamMixin as SafeStreamMixin
from ._http._receive import receive_on_executor as receive_on_executor
from ._http._static import SafeStaticFileHandler as SafeStaticFileHandler
from ._websocket._broadcast import BroadcastResult as BroadcastResult
from ._websocket._broadcast import broadcast as broadcast
from ._websocket._handler import SafeWebSocketMixin as SafeWebSocketMixin

__version__ = "0.1.0"

# The public classes and functions name the module users import them from (in reprs,
# pickles and the documentation), not the private module that defines them.
for _public in (
    BroadcastResult,
    SafeStaticFileHandler,
    SafeStreamMixin,
    SafeWebSocketMixin,
    broadcast,
    disable_thread_assertions,
    enable_thread_assertions,
    receive_on_executor,
    stream_on_executor,
    thread_assertions,
):
    _public.__module__ = __name__
del _public
