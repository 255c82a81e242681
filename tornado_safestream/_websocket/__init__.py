"""
The WebSocket face: send from any thread, in order, with bounded memory.

Built on the engine (``_core``). Its modules, from the top down:

- ``_broadcast``: `broadcast`: one message to many connections, from any thread.
- ``_handler``: `SafeWebSocketMixin`: a connection's queue of messages, its slow-client
  policy, and the loop side that writes the frames.
- ``_frames``: messages as the library sends them, encoded once, in the sending thread.

Imports point down: to ``_core`` only.
"""
