"""Argument types every command line shares (the main CLI, `show`, the corpus commands): one place, no cycles."""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    """A whole number >= 1, refused by argparse in one line otherwise."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def capacity_factor(value: str) -> float:
    """A capacity factor in (0, 64], refused by argparse in one line otherwise."""
    from moe_core.capacity.simulate import check_capacity_factor

    try:
        factor = float(value)
        check_capacity_factor(factor)
    except ValueError as error:
        message = f"{value!r} is not a number" if "could not convert" in str(error) else str(error).split(";")[0]
        raise argparse.ArgumentTypeError(message) from None
    return factor
