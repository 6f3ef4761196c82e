"""Checks of arguments and options, shared so that every one reads alike: each raises a
one-line ``ValueError`` naming the argument and the value it got, which the command-line
tools print as it stands."""

from __future__ import annotations

import math
import numbers
from collections import Counter


def integer(value, name: str, low: int = 1) -> int:
    """``value`` as an int, if it is an integer no smaller than ``low``. A bool is not one,
    and neither is 2.0: options are kept as given, and a float count fails later, far from
    where it was written."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def repeated(names) -> list:
    """The names that occur more than once in ``names``, sorted: what to name in the error."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


def real(value, name: str, low: float | None = None, high: float | None = None, *, closed: bool = False) -> float:
    """``value`` as a float, if it is a finite real number between ``low`` and ``high``
    (either may be None: no bound), the bounds excluded unless ``closed``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if closed else value > low
    if ok and high is not None:
        ok = value <= high if closed else value < high
    if not ok:
        brackets = "[]" if closed else "()"
        bounds = f"{brackets[0]}{'-inf' if low is None else low}, {'inf' if high is None else high}{brackets[1]}"
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r}")
    return float(value)
