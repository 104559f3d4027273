"""The onnxcam command line: thin click commands over the library.

Data goes to stdout (JSON with --json), words to stderr. Exit codes: 0 success; 1 an error (one
line on stderr; an unreadable image among others still lets the rest be processed); 2 a usage
error (bad option, unknown layer or method, target out of range, a gate on a metric the run
lacks); 3 a gate (eval/review --require, onnxcam.gates) failed. --debug shows tracebacks.
Files are written only through onnxcam.output (inside OUT, atomically, never over an input).
"""

from __future__ import annotations

import logging
import sys

import click

from ..console import one_line, quiet_libraries
from ..runtime import quiet_logs
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
    if not verbose:
        quiet_libraries()
        quiet_logs()


for _command in COMMANDS:
    cli.add_command(_command)


def _error(message: str, code: int) -> None:
    click.echo(f"onnxcam: error: {one_line(message)}", err=True)
    sys.exit(code)


def main() -> None:
    """The console script `onnxcam`: click's own usage errors as one line too (exit 2), Ctrl-C as
    one line and exit 130 (an explain run's OUT keeps its journal: rerun to finish it)."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _error(exc.format_message(), exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _error("interrupted; an unfinished explain run is marked in OUT (results.incomplete.jsonl): "
               "rerun the same command to finish it", 130)
    except BrokenPipeError:  # stdout closed early (e.g. `| head`): nothing more to say
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["COMMANDS", "cli", "main"]
