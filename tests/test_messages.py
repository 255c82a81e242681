"""Error messages name a value's type with the right article ("an int object")."""

from __future__ import annotations

import uuid
from http.client import HTTPException

import pytest

from tornado_safestream._core._chunks import to_bytes
from tornado_safestream._core._words import a_type


class UserThing:
    pass


class Item:
    pass


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "an int object"),
        ("x", "a str object"),
        (1.5, "a float object"),
        (None, "a NoneType object"),
        (object(), "an object object"),
        ([], "a list object"),
        ({}, "a dict object"),
        (Item(), "an Item object"),
        (UserThing(), "a UserThing object"),
        (uuid.uuid4(), "a UUID object"),
        (HTTPException(), "an HTTPException object"),
        (ValueError(), "a ValueError object"),
        (OSError(), "an OSError object"),
    ],
)
def test_a_type(value: object, expected: str) -> None:
    assert a_type(value) == expected


def test_a_chunk_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"^Export\.get\(\) yielded an int object; "):
        to_bytes(3, "Export.get")
    with pytest.raises(TypeError, match=r"^Export\.get\(\) yielded a list object; "):
        to_bytes([], "Export.get")
