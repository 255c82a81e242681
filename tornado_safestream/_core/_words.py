"""Small pieces of English for error messages."""

from __future__ import annotations

__all__ = ("a_type", "check_mixin_first")

#: Letters whose names start with a vowel sound ("an HTTPError", "an SSLContext").
_VOWEL_SOUND_LETTERS = frozenset("AEFHILMNORSX")
#: Words that start with a "u" sounded as "you" ("a UnicodeError", "a UserDict").
_YOU_SOUND = ("uni", "use", "usu", "uti", "ure", "uri", "uu")


def a_type(value: object) -> str:
    """
    The type of ``value`` with its article, as an error message names it: ``"an int
    object"``, ``"a str object"``, ``"an HTTPError object"``.
    """
    name = type(value).__qualname__
    if len(name) > 1 and name[:2].isupper():  # an acronym, read letter by letter
        vowel_sound = name[0] in _VOWEL_SOUND_LETTERS
    else:
        lower = name.lower()
        vowel_sound = lower[:1] in ("a", "e", "i", "o") or (
            lower[:1] == "u" and not lower.startswith(_YOU_SOUND)
        )
    return f"{'an' if vowel_sound else 'a'} {name} object"


def check_mixin_first(cls: type, mixin: type, base: type) -> None:
    """
    Refuse a class that lists ``mixin`` after ``base`` (a Tornado handler class): behind
    it, the mixin's methods are never called.

    :raises TypeError: saying how to list them.
    """
    mro = cls.__mro__
    if base in mro and mro.index(base) < mro.index(mixin):
        bases = ", ".join(b.__name__ for b in cls.__bases__)
        raise TypeError(
            f"class {cls.__qualname__}({bases}): list {mixin.__name__} before the "
            f"{base.__name__} base, as in class {cls.__name__}({mixin.__name__}, "
            f"{base.__name__}); behind it, its methods are never called"
        )
