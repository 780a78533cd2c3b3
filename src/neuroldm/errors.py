"""Errors that reach the user as one line, never as a traceback.

Every problem with the user's input (a file, a config key, a label) is a `NeuroLDMError`. The CLI prints its
message on one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
from os import PathLike


class NeuroLDMError(Exception):
    """A problem the user can fix: the message says what and where, on one line."""


class ConfigError(NeuroLDMError):
    """A bad configuration key or value."""


class InputError(NeuroLDMError):
    """A bad input file: `str(err)` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InputErrors(NeuroLDMError):
    """Several bad inputs found in one pass, reported together (one line each)."""

    def __init__(self, errors: list[InputError], context: str = "invalid input"):
        self.errors = list(errors)
        lines = [f"{len(self.errors)} {context}{'s' if len(self.errors) != 1 else ''}:"]
        lines += [f"  {e}" for e in self.errors]
        super().__init__("\n".join(lines))


class RunInUse(NeuroLDMError):
    """Another process holds the run directory's lock: the message names it (pid, host, command, since when)."""

    def __init__(self, run: str | PathLike, holder: str):
        try:
            h = json.loads(holder)
            who = f"`{h['command']}` (pid {h['pid']} on {h['host']}, since {h['started']})"
        except (ValueError, KeyError, TypeError):
            who = "another neuroldm process"
        super().__init__(f"{run}: in use by {who}; wait for it to finish or use another folder")
