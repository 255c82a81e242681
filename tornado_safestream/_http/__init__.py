"""
The faces over HTTP: streaming responses, static files and request bodies.

Each is built on the engine (``_core``). Its modules, from the top down:

- ``_receive``: `receive_on_executor`: a request body (or a WebSocket's messages) consumed
  in a thread pool, in order, with backpressure.
- ``_static``: `SafeStaticFileHandler`: Tornado's static-file handler with no file-system
  work on the IOLoop.
- ``_decorator``: `stream_on_executor`: a handler method run in a thread pool, streaming
  what it produces.
- ``_stream``: one stream, from the call of a decorated method to the finished response.
- ``_mixin``: `SafeStreamMixin`: response methods called from a producer thread go to the
  loop.
- ``_multipart``: a streamed ``multipart/form-data`` body, parsed in the executor (public
  as ``tornado_safestream.multipart``).

Imports point down: to ``_core``, and to ``_websocket`` (``receive_on_executor`` also
decorates the ``on_message`` of a ``SafeWebSocketMixin`` handler, and ``SafeStreamMixin``
refuses such a method in a class without that mixin). ``_websocket`` imports nothing from
here.
"""
