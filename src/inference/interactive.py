"""Interactive mode: a prompt loop that segments one image path per line.

`q` / `quit` / `exit`, end of input (Ctrl-D) and Ctrl-C all leave cleanly; a bad path or an
unreadable image prints one line and the loop goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from src.inference.outputs import OutputOptions, format_written
from src.inference.predictor import InferenceError, Predictor
from src.inference.single import segment_file
from utils.errors import DatasetError

PROMPT = "image path (q to quit, help)> "
QUIT_WORDS = ("q", "quit", "exit")
HELP = """Type the path of an image file and press Enter to segment it; results go to {output}.
  help          this text
  q, quit, exit leave (so do Ctrl-D and Ctrl-C)
Paths may be quoted (as terminals paste dragged files) and may start with ~."""


def run_interactive(
    predictor: Predictor,
    output_dir,
    options: OutputOptions,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
) -> int:
    """Run the prompt loop until the user quits; returns the number of images segmented."""
    if read is input and sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (importing it gives input() line editing and history)
        except ImportError:
            pass
    write(
        f"Interactive segmentation ({predictor.runtime.describe()}, {predictor.options.steps} steps). "
        f"Type 'help' for help, 'q' to quit."
    )
    segmented = 0
    while True:
        try:
            line = read(PROMPT).strip()
        except (EOFError, KeyboardInterrupt):
            write("")  # end the prompt's line
            break
        if not line:
            continue
        if line.lower() in QUIT_WORDS:
            break
        if line.lower() in ("help", "h", "?"):
            write(HELP.format(output=output_dir))
            continue
        try:
            result = segment_file(predictor, _parse_path(line), output_dir, options)
        except (InferenceError, DatasetError) as error:
            write(f"error: {error}")
            continue
        except KeyboardInterrupt:
            write("\ninterrupted")
            break
        height, width = result.size
        write(
            f"{result.source.name} ({width}x{height}) segmented in {result.seconds:.2f} s, "
            f"{result.foreground:.1%} foreground; saved {format_written(result.written)}"
        )
        segmented += 1
    write(f"bye ({segmented} image{'s' if segmented != 1 else ''} segmented)")
    return segmented


def _parse_path(line: str) -> Path:
    """A typed or pasted path: surrounding quotes and escaped spaces undone, `~` expanded."""
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "'\"":
        line = line[1:-1]
    return Path(line.replace("\\ ", " ")).expanduser()
