"""Extra click commands, registered on the main group by `onnxcam.cli` (``cli.add_command``).

They follow cli.py's conventions: data on stdout (JSON with --json), words on stderr, exit codes
0 (ok), 1 (an error, one line on stderr), 2 (a usage error); nothing written outside -o, and
nothing replaced without --overwrite.
"""

from __future__ import annotations

import sys
import traceback

import click


def debug_requested() -> bool:
    """True when the root group was given --debug (read from click's context, not cli.py)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def fail(exc: BaseException) -> None:
    """One line on stderr and the error's exit code (1 unless it says otherwise; usage errors 2)."""
    if debug_requested():
        traceback.print_exc()
    click.echo(f"onnxcam: error: {exc}", err=True)
    sys.exit(getattr(exc, "exit_code", 1))


def parse_size(value: str | None) -> tuple[int, int] | None:
    """--size HxW → (H, W); None stays None."""
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
        return h, w
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW, e.g. 224x224", param_hint="--size") from None
