"""User-facing errors: one line that names the problem and the fix; the CLI turns them into exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RisbenchError(Exception):
    """An error caused by the user's input (config, names, files); printed as one line, exit code 2."""


class UnknownNameError(RisbenchError, KeyError):
    """A name that is not registered / not a known key."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class IncompatibleError(RisbenchError):
    """Two components that cannot be combined."""


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to `name`, or None if nothing is close."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(what: str, name: str, known: Iterable[str]) -> str:
    """'unknown encoder 'beit'; did you mean 'beit3'? known: a, b, c'."""
    known = sorted(known)
    guess = closest(name, known)
    parts = [f"unknown {what} '{name}'"]
    if guess:
        parts.append(f"did you mean '{guess}'?")
    parts.append(f"known: {', '.join(known) if known else '(none)'}")
    return "; ".join(parts)
