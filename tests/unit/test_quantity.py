"""resource.Quantity parsing and formatting."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kube.api.quantity import QuantityError, canonicalize_quantity, format_quantity, parse_quantity


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0", "0"),
        ("1", "1"),
        ("100m", "0.1"),
        ("1500m", "1.5"),
        ("250n", "0.00000025"),
        ("5u", "0.000005"),
        ("1k", "1000"),
        ("2M", "2000000"),
        ("3G", "3e9"),
        ("4T", "4e12"),
        ("5P", "5e15"),
        ("6E", "6e18"),
        ("1Ki", "1024"),
        ("128Mi", "134217728"),
        ("1Gi", "1073741824"),
        ("1.5Gi", "1610612736"),
        ("2Ti", str(2 * 2**40)),
        ("1Pi", str(2**50)),
        ("1Ei", str(2**60)),
        ("1e3", "1000"),
        ("1E3", "1000"),
        ("1e-3", "0.001"),
        ("1E+2", "100"),
        ("-1", "-1"),
        ("+2k", "2000"),
        ("-500m", "-0.5"),
        (".5", "0.5"),
        ("5.", "5"),
        ("0.1", "0.1"),
        (2, "2"),
        (0.25, "0.25"),
        (1e-05, "0.00001"),
    ],
)
def test_parse(text: str | int | float, want: str) -> None:
    assert parse_quantity(text) == Decimal(want)


@pytest.mark.parametrize(
    "text",
    ["", "1.2.3", "10MB", "Mi", "1K", "abc", " 1", "1 ", "1e", "1Mi1", "--1", ".", "1.5.Gi", "1iB", "0x10"],
)
def test_parse_rejects_garbage_with_upstream_message(text: str) -> None:
    with pytest.raises(QuantityError) as e:
        parse_quantity(text)
    assert (
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        in str(e.value)
    )


def test_parse_rejects_non_numbers() -> None:
    for v in (True, None, [1], float("nan")):
        with pytest.raises(QuantityError):
            parse_quantity(v)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "binary", "want"),
    [
        ("0", False, "0"),
        ("1", False, "1"),
        ("0.1", False, "100m"),
        ("1.5", False, "1500m"),
        ("1000", False, "1k"),
        ("1500", False, "1500"),
        ("2000000", False, "2M"),
        ("0.0000001", False, "100n"),
        ("0.0000000001", False, "1n"),  # below nano precision rounds up
        ("-0.5", False, "-500m"),
        ("1073741824", True, "1Gi"),
        ("1610612736", True, "1536Mi"),
        ("1024", True, "1Ki"),
        ("1000", True, "1k"),  # below 1024: decimal SI, as upstream
        ("2000", True, "2000"),  # an integer not divisible by 1024 stays plain
        ("100", True, "100"),
        ("0.5", True, "500m"),  # fractions fall back to decimal SI
    ],
)
def test_format(value: str, binary: bool, want: str) -> None:
    assert format_quantity(Decimal(value), binary=binary) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1024Mi", "1Gi"),
        ("1000m", "1"),
        ("0.5", "500m"),
        ("1536Mi", "1536Mi"),
        ("128974848", "128974848"),
        ("2000k", "2M"),
    ],
)
def test_canonicalize_keeps_format(text: str, want: str) -> None:
    assert canonicalize_quantity(text) == want


def test_round_trip() -> None:
    for text in ("100m", "128Mi", "1Gi", "3", "250n", "1E"):
        assert parse_quantity(canonicalize_quantity(text)) == parse_quantity(text)
