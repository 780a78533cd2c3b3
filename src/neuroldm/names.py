"""File names made from input data (subject and session ids, class names): the one sanitiser.

A subject id comes from a user's CSV or BIDS folder and may hold anything, ``../../elsewhere/x`` included. Every
file or folder name that neuroldm derives from such a value goes through `safe_name`, so it stays one plain name
inside the folder it is written to; `UniqueNames` then keeps two values that sanitise alike (``a/b``, ``a-b``) from
overwriting each other's file.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(value: object) -> str:
    """`value` as one file name: letters, digits, ``.``, ``_`` and ``-`` only (each other run becomes ``-``), never
    starting with a dot (no hidden files, no ``..``)."""
    name = _UNSAFE.sub("-", str(value))
    if name.startswith("."):
        name = "-" + name.lstrip(".")
    if not name:
        raise ValueError(f"no file name can be made of {value!r}")
    return name


class UniqueNames:
    """Hands out sanitised names, each once: a name already given gets ``-2``, ``-3``, ... appended."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def take(self, value: object) -> str:
        base = safe_name(value)
        name, k = base, 1
        while name in self._taken:
            k += 1
            name = f"{base}-{k}"
        self._taken.add(name)
        return name
