"""Kubernetes resource quantities ("500m", "16Gi", "4"): parsing and validation for the stack config."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
}
_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<suffix>"
    + "|".join(sorted((s for s in _SUFFIXES if s), key=len, reverse=True))
    + r")?$"
)


def to_decimal(quantity: str) -> Decimal:
    """The value of `quantity` in base units (cores, bytes)."""
    match = _QUANTITY.match(quantity)
    if match is None:
        raise ValueError(
            f"{quantity!r} is not a Kubernetes quantity; allowed: a positive number with an optional "
            f"suffix ({', '.join(s for s in _SUFFIXES if s)}), e.g. '500m', '4', '16Gi'"
        )
    return Decimal(match["number"]) * _SUFFIXES[match["suffix"] or ""]


def _positive_quantity(value: str) -> str:
    if to_decimal(value) <= 0:
        raise ValueError(f"{value!r} must be greater than zero")
    return value


Quantity = Annotated[str, AfterValidator(_positive_quantity)]
