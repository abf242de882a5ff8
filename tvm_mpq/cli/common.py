"""What every ``tvm-mpq`` command shares: exit codes, the usage error, argument types."""

import argparse

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


def bits_list(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``: sorted, distinct, each in 1..8."""
    try:
        bits = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits are comma-separated integers, got {text!r}") from None
    if not bits or bits[0] < 1 or bits[-1] > 8:
        raise argparse.ArgumentTypeError(f"bits must lie in 1..8, got {text!r}")
    return bits
