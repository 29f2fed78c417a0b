"""How the data modules report bad input: :class:`DataError` and :func:`raise_collected`.

Every check of a dataset (list files, images, split contents, prepared shards) collects all of its
problems before it raises, so one run names every bad line and file at once; ``raise_collected``
turns such a list into one :class:`DataError` that shows the first few.
"""
from __future__ import annotations

from collections.abc import Sequence

from vpeft.errors import UserError

__all__ = ["MAX_SHOWN_ERRORS", "DataError", "raise_collected"]

MAX_SHOWN_ERRORS = 20


class DataError(UserError):
    """Invalid input data or prepared output.

    The message starts with ``path:line: `` when a list-file line is at fault, else ``path: ``.
    ``errors`` holds every individual message (the message itself shows at most 20).
    """

    def __init__(self, message: str, errors: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.errors: list[str] = list(errors) if errors is not None else [message]


def raise_collected(errors: Sequence[str]) -> None:
    """Raise one :class:`DataError` holding every message of ``errors`` (its text shows the first
    MAX_SHOWN_ERRORS and a count of the rest); do nothing when ``errors`` is empty."""
    if not errors:
        return
    shown = list(errors[:MAX_SHOWN_ERRORS])
    if len(errors) > MAX_SHOWN_ERRORS:
        shown.append(f"... and {len(errors) - MAX_SHOWN_ERRORS} more")
    raise DataError("\n".join(shown), errors)
