"""The handler methods that a producer thread may call: they are carried out on the loop."""

from __future__ import annotations

__all__ = ("FLUSHING_METHODS", "RESPONSE_METHODS")

#: The `~tornado.web.RequestHandler` response methods. Called from a producer thread they are
#: forwarded to the IOLoop thread, in order; called anywhere else they are Tornado's own.
RESPONSE_METHODS = (
    "write",
    "flush",
    "finish",
    "set_status",
    "set_header",
    "add_header",
    "clear_header",
    "clear",
    "set_cookie",
    "clear_cookie",
    "send_error",
    "redirect",
)

#: The ones that may write to the connection (``redirect`` and ``send_error`` finish).
FLUSHING_METHODS = frozenset(("flush", "finish", "send_error", "redirect"))
