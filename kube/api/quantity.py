"""Resource quantities (``resource.Quantity``): "500m", "128Mi", "1e3", "2".

Upstream grammar (apimachinery ``pkg/api/resource``)::

    <quantity>        ::= <signedNumber><suffix>
    <signedNumber>    ::= [+-] <number>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= e <signedNumber> | E <signedNumber>   (integer exponent)

Values are exact ``decimal.Decimal`` numbers. Formatting follows the upstream
canonical form closely enough for printing and round-tripping: the largest
suffix that keeps the mantissa an integer, rounded up to nano precision.
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal

__all__ = [
    "QuantityError",
    "parse_quantity",
    "format_quantity",
    "canonicalize_quantity",
    "is_binary_quantity",
    "QUANTITY_REGEX_TEXT",
]

# The text upstream puts in its error message (ErrFormatWrong).
QUANTITY_REGEX_TEXT = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_FORMAT_ERROR = f"quantities must match the regular expression '{QUANTITY_REGEX_TEXT}'"

_NUMBER_RE = re.compile(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?(.*)$")
_EXPONENT_RE = re.compile(r"^[eE]([+-]?[0-9]+)$")

_BINARY: dict[str, int] = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL: dict[str, int] = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
_DECIMAL_BY_EXP: dict[int, str] = {v: k for k, v in _DECIMAL.items()}
_BINARY_BY_POWER: list[tuple[int, str]] = sorted(((p, s) for s, p in _BINARY.items()), reverse=True)

# Plenty of precision: quantities up to the exa range with nano resolution.
_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_NANO = Decimal("1e-9")


class QuantityError(ValueError):
    """A string that is not a valid Kubernetes quantity."""


def _split(s: str) -> tuple[str, str, str, str]:
    """(sign, integer digits, fraction digits, suffix) or QuantityError."""
    m = _NUMBER_RE.match(s)
    if m is None:  # pragma: no cover - the pattern matches every string
        raise QuantityError(_FORMAT_ERROR)
    sign, whole, frac, suffix = m.group(1), m.group(2), m.group(3) or "", m.group(4)
    if not whole and not frac:
        raise QuantityError(_FORMAT_ERROR)
    return sign, whole, frac, suffix


def parse_quantity(s: str | int | float) -> Decimal:
    """Parse a quantity into an exact Decimal: "1500m" -> Decimal("1.5")."""
    if isinstance(s, bool):
        raise QuantityError(f"{_FORMAT_ERROR} (got a boolean)")
    if isinstance(s, int):
        return Decimal(s)
    if isinstance(s, float):
        if s != s or s in (float("inf"), float("-inf")):
            raise QuantityError(_FORMAT_ERROR)
        # JSON numbers arrive as floats; use their shortest repr, like the
        # upstream decoder which parses the raw JSON text.
        return parse_quantity(repr(s))
    if not isinstance(s, str):
        raise QuantityError(f"{_FORMAT_ERROR} (got {type(s).__name__})")
    text = s.strip()
    if text != s or not text:
        raise QuantityError(_FORMAT_ERROR)
    sign, whole, frac, suffix = _split(text)
    number = Decimal(f"{sign}{whole or '0'}.{frac or '0'}", context=_CTX)
    if suffix in _BINARY:
        return _CTX.multiply(number, Decimal(2 ** _BINARY[suffix]))
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix], context=_CTX)
    em = _EXPONENT_RE.match(suffix)
    if em is not None:
        exp = int(em.group(1))
        if abs(exp) > 1000:
            raise QuantityError(f"quantity exponent out of range: {s!r}")
        return number.scaleb(exp, context=_CTX)
    raise QuantityError(_FORMAT_ERROR)


def is_binary_quantity(s: str | int | float) -> bool:
    """True if the text uses a binary suffix (Ki, Mi, ...), the upstream BinarySI format."""
    if not isinstance(s, str):
        return False
    try:
        return _split(s.strip())[3] in _BINARY
    except QuantityError:
        return False


def _round_up_nano(d: Decimal) -> Decimal:
    """Upstream keeps at most nano precision and rounds fractions up (away from zero)."""
    return d.quantize(_NANO, rounding=decimal.ROUND_UP, context=_CTX)


def _int_text(d: Decimal) -> str:
    return str(d.to_integral_exact(context=_CTX).quantize(Decimal(1), context=_CTX))


def format_quantity(d: Decimal, binary: bool = False) -> str:
    """The canonical text for a value: 1.5 -> "1500m", 2**30 -> "1Gi" (binary) or "1073741824".

    Decimal form uses the largest SI suffix (n..E) that keeps the mantissa an
    integer. Binary form applies to integers of magnitude 1024 or more: the
    largest power of 1024 that divides them, else the plain integer; smaller
    or fractional values fall back to the decimal form, as upstream does.
    """
    if not isinstance(d, Decimal):
        d = Decimal(d)
    d = _round_up_nano(d)
    if d == 0:
        return "0"
    sign = "-" if d < 0 else ""
    a = abs(d)
    if binary and a == a.to_integral_value() and a >= 1024:
        n = int(a)
        for power, suffix in _BINARY_BY_POWER:
            unit = 1 << power
            if n % unit == 0:
                return f"{sign}{n // unit}{suffix}"
        return f"{sign}{n}"  # upstream never mixes decimal suffixes into binary integers
    # Decimal SI: pick the largest exponent (multiple of 3, -9..18) that
    # leaves an integral mantissa.
    for exp in range(18, -10, -3):
        mantissa = a.scaleb(-exp, context=_CTX)
        if mantissa == mantissa.to_integral_value() and mantissa >= 1:
            return f"{sign}{_int_text(mantissa)}{_DECIMAL_BY_EXP[exp]}"
    # Rounded to nano precision above, so the "n" step always succeeds.
    return f"{sign}{_int_text(a.scaleb(9, context=_CTX))}n"  # pragma: no cover


def canonicalize_quantity(s: str | int | float) -> str:
    """Parse and re-print a quantity keeping its format: "1024Mi" -> "1Gi", "1000m" -> "1"."""
    return format_quantity(parse_quantity(s), binary=is_binary_quantity(s))
