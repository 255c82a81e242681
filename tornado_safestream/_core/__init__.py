"""
The engine: one ordered, byte-budgeted channel and its two sides.

A stream is a channel between a thread of an executor and the IOLoop. The engine works on
Tornado's objects (a `~tornado.web.RequestHandler`, its connection, the IOLoop) and imports
none of the package's handler classes: the faces in ``_http`` and ``_websocket`` are built
on it. Its modules, from the top down:

- ``_consumer``: the loop side of an outbound stream, which does every ``write`` and
  ``flush``.
- ``_producers``: the thread-pool side, one class per style (push, generator).
- ``_channel``: the channel itself: ordered operations from a producer thread to the loop,
  the byte budget, and how each side waits for the other.
- ``_ops``: what goes through a channel (chunks, flushes, calls, the end, other items).
- ``_inbound``: the reverse channel, from the loop to a worker thread (request bodies,
  WebSocket messages).
- ``_output``: the output path after a stream's first flush (one copy of the body at most).
- ``_sendfile``: a range of an open file, sent with ``os.sendfile``.
- ``_readahead``: how many bytes of a generator stream may wait for its client.
- ``_memory``: the process-wide memory cap that every stream counts against.
- ``_trim``: giving the memory the streams let go of back to the system.
- ``_lanes``: where generator producers that compute run.
- ``_executors``: running work in an executor from the loop.
- ``_waiting``: how a producer thread waits for the loop (never for ever).
- ``_waker``: one loop wake-up for many streams.
- ``_stats``: a stream's figures.
- ``_chunks``: what a stream accepts as a chunk, and how it becomes bytes.
- ``_calls``: the handler methods a producer thread may call.
- ``_words``: small pieces of English for error messages.

Imports point down: a module here imports the standard library, Tornado and other modules
of ``_core``, never ``_http``, ``_websocket`` or the public modules. (``_consumer`` names
``SafeStreamMixin`` in its annotations, under ``TYPE_CHECKING`` only.)
"""
