"""The onnxcam command line: thin click commands over the library.

Data goes to stdout (JSON with --json), words to stderr. Exit codes: 0 success; 1 an error (one
line on stderr; an unreadable image among others still lets the rest be processed); 2 a usage
error (bad option, unknown layer or method, target out of range). --debug shows tracebacks.
Files are written only through onnxcam.output (inside OUT, atomically, never over an input).
"""

from __future__ import annotations

import logging
import sys

import click

from . import check, evaluate, explain, export, inspect

COMMANDS: tuple[click.Command, ...] = (
    explain.explain, inspect.layers, inspect.info, export.export, check.check, inspect.methods,
    evaluate.eval_, evaluate.review,
)


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
@click.version_option(package_name="onnxcam")
def cli(debug: bool, verbose: bool) -> None:
    """CAM and Grad-CAM explanations for ONNX image models, computed by onnxruntime."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="onnxcam: %(message)s",
                        stream=sys.stderr)


for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    """The console script `onnxcam`."""
    cli(standalone_mode=True)


__all__ = ["COMMANDS", "cli", "main"]
