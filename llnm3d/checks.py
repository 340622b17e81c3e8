"""Checks of the parameters the API takes, shared by every stage.

Each check raises one :class:`~llnm3d.io.InputError` that names the parameter and what it
allows, so an absurd value (a billion permutations, a NaN threshold, a misspelt choice) stops
a run before it starts instead of producing a silently wrong answer; the command line reports
it as one line with exit code 2.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import cast

from .io import InputError

# Seeds feed NumPy's SeedSequence (non-negative) and torch generators (64-bit, after mixing
# with an epoch); 32 bits keep every such use in range and are more seeds than anyone needs.
MAX_SEED = 2**32 - 1


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 integer: bool = False, low_inclusive: bool = True,
                 high_inclusive: bool = True) -> float | int:
    """Return ``value`` if it is a finite number within the given bounds.

    Parameters
    ----------
    name : str
        The parameter's name, shown in the message.
    value
        The value to check. Booleans are refused: ``True`` is not a count.
    low, high : float, optional
        Bounds; None leaves that side open (but the value must still be finite).
    integer : bool
        Require an integer (an ``int`` or a NumPy integer; ``2.0`` is refused too, so a float
        computed by mistake is not truncated silently).
    low_inclusive, high_inclusive : bool
        Whether ``low`` and ``high`` themselves are allowed.

    Raises
    ------
    InputError
        Naming the parameter, the value and the allowed range.
    """
    bounds = _range_text(low, high, low_inclusive, high_inclusive)
    allowed = ("an integer" if integer else "a number" if bounds else "a finite number") + bounds
    kind = numbers.Integral if integer else numbers.Real
    # Integers need no finiteness test (and a huge one would overflow math.isfinite).
    number = isinstance(value, kind) and not isinstance(value, bool) and (
        isinstance(value, numbers.Integral) or math.isfinite(value))
    if not number or (low is not None and (value < low if low_inclusive else value <= low)) \
            or (high is not None and (value > high if high_inclusive else value >= high)):
        raise InputError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_optional_workers(workers: int | None) -> None:
    """Refuse a worker count other than None (all cores) or an integer >= 1.

    Without this, 0 silently means all cores and a negative count one process.
    """
    if workers is not None:
        check_number("workers", workers, low=1, integer=True)


def check_seed(seed: int, name: str = "seed") -> int:
    """Return ``seed`` if it is an integer in 0 to :data:`MAX_SEED`."""
    # integer=True: check_number returns the value itself, an int (or a NumPy integer).
    return cast(int, check_number(name, seed, low=0, high=MAX_SEED, integer=True))


def check_choice(name: str, value, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise an InputError that lists
    them and suggests the closest one ("did you mean ...?")."""
    allowed = list(allowed)
    if isinstance(value, str) and value in allowed:
        return value
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InputError(f"unknown {name} {value!r} (choose from {', '.join(allowed)}){hint}")


def _range_text(low, high, low_inclusive: bool, high_inclusive: bool) -> str:
    """`` in [1, 100000]``, `` > 0``, ... for the message; "" when unbounded."""
    if low is not None and high is not None:
        return (f" in {'[' if low_inclusive else '('}{_bound(low)}, {_bound(high)}"
                f"{']' if high_inclusive else ')'}")
    if low is not None:
        return f" {'>=' if low_inclusive else '>'} {_bound(low)}"
    if high is not None:
        return f" {'<=' if high_inclusive else '<'} {_bound(high)}"
    return ""


def _bound(value: float) -> str:
    # Integral bounds in full (4294967295, not 4.29497e+09); others as short as they go.
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
