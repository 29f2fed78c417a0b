"""How the report writes numbers: one rounding rule for every section."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal


def round1(value: float) -> Decimal:
    """Round half up on the shortest decimal form (70.25 -> 70.3), as a reader would by hand.

    ``f"{x:.1f}"`` rounds the binary value half-to-even, which prints 70.25 as 70.2.
    """
    return Decimal(repr(value)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def fmt_acc(value: float | None) -> str:
    """An accuracy in percent, one decimal; '–' for none."""
    return "–" if value is None else f"{round1(value):.1f}"
