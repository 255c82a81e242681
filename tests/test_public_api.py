"""The public surface is exactly what API.md lists (cf. anyio tests/test_all_attributes.py)."""

from __future__ import annotations
import __future__

import importlib
import pickle
import types
from pathlib import Path

import pytest
from tornado.web import StaticFileHandler

import tornado_safestream

#: API.md, "Top-level names"
API_NAMES = (
    "SafeStreamMixin",
    "stream_on_executor",
    "WrongThreadError",
    "enable_thread_assertions",
    "disable_thread_assertions",
    "thread_assertions",
    "receive_on_executor",
    "__version__",
    # Added in 0.2
    "SafeStaticFileHandler",
    "SafeWebSocketMixin",
    "broadcast",
    "BroadcastResult",
)
#: the names of the streaming engine (the rest come with assertion mode and WebSockets)
ENGINE_NAMES = ("SafeStreamMixin", "stream_on_executor", "__version__")

assertion_mode_missing = pytest.mark.skipif(
    not hasattr(tornado_safestream, "thread_assertions"), reason="assertion mode not built yet"
)


class TestPublicApi:
    def test_all_is_a_tuple_without_duplicates(self) -> None:
        assert isinstance(tornado_safestream.__all__, tuple)
        assert len(set(tornado_safestream.__all__)) == len(tornado_safestream.__all__)

    def test_engine_names_exported_and_importable(self) -> None:
        for name in ENGINE_NAMES:
            assert name in tornado_safestream.__all__
            assert getattr(tornado_safestream, name) is not None

    @assertion_mode_missing
    def test_all_equals_api_names(self) -> None:
        assert sorted(tornado_safestream.__all__) == sorted(API_NAMES)
        for name in API_NAMES:
            assert hasattr(tornado_safestream, name), name

    def test_all_lists_only_api_names(self) -> None:
        assert set(tornado_safestream.__all__) <= set(API_NAMES)

    def test_nothing_else_public(self) -> None:
        public = {
            name
            for name, value in vars(tornado_safestream).items()
            if not name.startswith("_")
            and not isinstance(value, types.ModuleType)
            and value is not __future__.annotations
        }
        assert public <= set(tornado_safestream.__all__), public - set(tornado_safestream.__all__)

    def test_objects_come_from_the_package(self) -> None:
        for name in (
            "SafeStreamMixin",
            "stream_on_executor",
            "SafeStaticFileHandler",
            "SafeWebSocketMixin",
            "broadcast",
            "receive_on_executor",
        ):
            module = getattr(tornado_safestream, name).__module__
            assert module.split(".")[0] == "tornado_safestream", (name, module)

    @pytest.mark.parametrize(
        ("module", "names"),
        [
            (
                "tornado_safestream",
                (
                    "BroadcastResult",
                    "SafeStaticFileHandler",
                    "SafeStreamMixin",
                    "SafeWebSocketMixin",
                    "WrongThreadError",
                    "broadcast",
                    "disable_thread_assertions",
                    "enable_thread_assertions",
                    "receive_on_executor",
                    "stream_on_executor",
                    "thread_assertions",
                ),
            ),
            (
                "tornado_safestream.memory",
                ("MemoryStats", "StreamStats", "memory_stats", "set_memory_cap"),
            ),
            ("tornado_safestream.multipart", ("DiskFile", "FileTarget", "MultipartForm", "Part")),
        ],
    )
    def test_objects_name_their_public_module(self, module: str, names: tuple[str, ...]) -> None:
        """Reprs, pickles and the docs say where users import a class or function from."""
        public = importlib.import_module(module)
        for name in names:
            obj = getattr(public, name)
            assert (obj.__module__, obj.__qualname__) == (module, name)
            if isinstance(obj, type):
                assert repr(obj) == f"<class '{module}.{name}'>"

    def test_stats_survive_a_pickle(self) -> None:
        from tornado_safestream.memory import memory_stats

        stats = memory_stats()
        assert pickle.loads(pickle.dumps(stats)) == stats

    def test_version_is_a_string(self) -> None:
        assert isinstance(tornado_safestream.__version__, str)
        assert tornado_safestream.__version__

    def test_py_typed_is_shipped(self) -> None:
        assert tornado_safestream.__file__ is not None
        assert (Path(tornado_safestream.__file__).parent / "py.typed").is_file()

    @assertion_mode_missing
    def test_wrong_thread_error_is_a_runtime_error(self) -> None:
        error_class = vars(tornado_safestream)["WrongThreadError"]
        assert isinstance(error_class, type)
        assert issubclass(error_class, RuntimeError)

    def test_safe_static_file_handler_is_a_static_file_handler(self) -> None:
        handler_class = tornado_safestream.SafeStaticFileHandler
        assert issubclass(handler_class, StaticFileHandler)
        assert handler_class.executor is None
        assert isinstance(handler_class.max_buffer_bytes, int)
        assert callable(handler_class.reset)

    def test_broadcast_result_is_a_named_tuple_of_counts(self) -> None:
        result = tornado_safestream.BroadcastResult(sent=3, dropped=1, closed=2)
        assert isinstance(result, tuple)
        assert result._fields == ("sent", "dropped", "closed")
        assert tuple(result) == (3, 1, 2)


class TestMultipartModule:
    def test_all(self) -> None:
        from tornado_safestream import multipart

        assert multipart.__all__ == ("DiskFile", "FileTarget", "MultipartForm", "Part")
        for name in multipart.__all__:
            assert getattr(multipart, name).__module__.startswith("tornado_safestream")
