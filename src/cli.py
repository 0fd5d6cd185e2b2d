"""Shared command-line behaviour for the top-level scripts."""

import argparse
import sys

from src.fields import field_help


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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def number_in(low: float, high: float, low_inclusive: bool = True, high_inclusive: bool = True, hint: str = ""):
    """argparse type: a number between low and high (each end inclusive or not)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value >= low if low_inclusive else value > low
        below = value <= high if high_inclusive else value < high
        if not (above and below):
            ends = {
                (True, True): "inclusive",
                (False, False): "exclusive",
                (True, False): f"{low:g} included, {high:g} excluded",
                (False, True): f"{low:g} excluded, {high:g} included",
            }
            raise argparse.ArgumentTypeError(
                f"must be between {low:g} and {high:g} ({ends[low_inclusive, high_inclusive]}){hint}, got {value}"
            )
        return value

    return parse


def int_list(text: str) -> tuple:
    """argparse type: comma-separated integers, "1,2,4,8" -> (1, 2, 4, 8)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4,8, got {text!r}") from None


def config_flag(group, config_class, name: str, *flag_names: str, typed_only: bool = True, **kwargs) -> None:
    """Add the flag of dataclass field `name` (--name-with-dashes unless `flag_names` are given),
    its help and shown default taken from the field (src.fields.option). With `typed_only`, the
    flag's value is left out of the parsed namespace unless it is typed (default SUPPRESS), so the
    dataclass's own default applies and the namespace says which flags the user gave; without,
    the namespace holds the field's default."""
    help_text, field_default = field_help(config_class, name)
    default = field_default
    if isinstance(default, bool):
        default = "on" if default else "off"
    elif isinstance(default, tuple):
        default = ",".join(map(str, default))
    switch = kwargs.get("action") in ("store_true", "store_false")  # the flag's name says what it does
    shown = "" if default is None or switch or "(default" in help_text else f" (default: {default})"
    group.add_argument(
        *(flag_names or [f"--{name.replace('_', '-')}"]),
        dest=name,
        default=argparse.SUPPRESS if typed_only else field_default,
        help=(kwargs.pop("help", None) or help_text) + shown,
        **kwargs,
    )
