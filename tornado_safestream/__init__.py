"""
Stream a Tornado response from a thread pool, safely.

Tornado's `~tornado.web.RequestHandler` may only be used on its IOLoop's thread. With
`SafeStreamMixin` and `stream_on_executor`, a handler method runs in an executor and
writes (push style) or yields (generator style) its response there, while every
``write``/``flush`` is done on the loop, in order, with backpressure.
"""

from __future__ import annotations

__all__ = (
    "SafeStreamMixin",
    "__version__",
    "stream_on_executor",
)

from ._decorator import stream_on_executor as stream_on_executor
from ._mixin import SafeStreamMixin as SafeStreamMixin

__version__ = "0.1.0"
