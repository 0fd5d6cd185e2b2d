"""Shared command-line behaviour for the top-level scripts."""

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a single-line error (`prog: error: ...`), exit code 2, and no usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message: str, code: int = 1):
    """Print a one-line error to stderr and exit: for problems found after parsing (bad files)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def size_part(text: str) -> list:
    """One token of --image-size: "256" or "480x640" (H x W)."""
    try:
        values = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 256, 256 320 or 256x320 (H W), got {text!r}") from None
    if len(values) > 2 or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected a size like 256, 256 320 or 256x320 (H W), got {text!r}")
    return values


def image_size_from_parts(parts) -> tuple:
    """--image-size's tokens (nargs="+") -> (H, W): N, "H W" or "HxW"; argparse.ArgumentTypeError otherwise."""
    values = [v for part in parts for v in (part if isinstance(part, list) else [part])]
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return tuple(values)
    raise argparse.ArgumentTypeError(f"expected one size, H W or HxW, got {len(values)} numbers")
