"""Words for counts, so that output reads "1 row" and "2 rows", never "1 rows"."""

from __future__ import annotations


def count(number: int, noun: str, plural: str | None = None) -> str:
    """`number` and the noun, singular for exactly one (plural: the noun + "s" unless given)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
