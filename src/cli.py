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
