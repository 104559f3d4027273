"""What every command shares: the one error path, the image collector, --input parsing, the
progress bar and the prepared model of the inspection commands."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import click
import numpy as np

from ..console import escape, one_line
from ..errors import OnnxcamError, UsageError
from ..limits import MAX_NPY_BYTES, read_bytes
from ..image import IMAGE_SUFFIXES
from ..preprocessing import DEFAULT_SIZE

log = logging.getLogger("onnxcam")
F = TypeVar("F", bound=Callable[..., Any])


def debug_requested() -> bool:
    """True when the root group was given --debug (read from click's context: no global state)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def fail(exc: BaseException) -> None:
    """One line on stderr and the error's exit code (1 unless it says otherwise; usage errors 2)."""
    if debug_requested():
        traceback.print_exc()
    click.echo(f"onnxcam: error: {one_line(str(exc)) or type(exc).__name__}", err=True)
    sys.exit(getattr(exc, "exit_code", 1))


def guarded(command: F) -> F:
    """The one error path of every command: onnxcam's errors and OS errors as one line with their
    exit code, anything else as one 'unexpected' line (--debug shows the traceback); click's own
    usage errors and exits pass through."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (OnnxcamError, OSError) as exc:
            fail(exc)
        except Exception as exc:  # noqa: BLE001  (a bug or a runtime failure: one line, --debug for more)
            fail(OnnxcamError(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"))
        return None

    return wrapper  # type: ignore[return-value]


def echo_line(text: str, err: bool = False) -> None:
    """One line of human-readable output, control characters in names and labels escaped."""
    click.echo(escape(text), err=err)


def report_error(message: str) -> None:
    """One line on stderr for an error that does not stop the command (e.g. one bad image)."""
    click.echo(f"onnxcam: error: {one_line(message)}", err=True)


def collect_images(inputs: tuple[str, ...], exclude: Path | None = None) -> list[tuple[Path, Path | None]]:
    """(image, root) pairs: each folder searched recursively for image files (root = the folder,
    so outputs can mirror the layout below it), each file taken as given (root None; an unreadable
    one is reported later, one by one). Files inside `exclude` (the output folder) are skipped."""
    files: list[tuple[Path, Path | None]] = []
    ex = exclude.resolve() if exclude is not None else None
    for raw in inputs:
        p = Path(raw)
        if not p.is_dir():
            files.append((p, None))
            continue
        if ex is not None and (p.resolve() == ex or ex in p.resolve().parents):
            raise UsageError(f"the output folder {exclude} holds the input folder {p}: outputs could replace "
                             f"inputs and be taken as inputs next time; choose an -o outside it")
        found = sorted(
            f for f in p.rglob("*")
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and (ex is None or ex not in f.resolve().parents)
        )
        if not found:
            log.info("no images in %s", p)
        files.extend((f, p) for f in found)
    return files


def _input_value(name: str, val: str) -> np.ndarray:
    """One --input value: numbers (a comma list; one number is a scalar) or a .npy file of numbers."""
    if val.endswith(".npy"):
        data = read_bytes(val, f"--input {name}", MAX_NPY_BYTES, UsageError)
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise UsageError(f"--input {name}: {val} is not a .npy array of numbers (numpy.save, no objects)") from None
    else:
        try:
            arr = np.asarray([float(v) for v in val.split(",")])
        except ValueError:
            raise UsageError(f"--input {name}={val}: VALUE must be numbers (1 or 1,2,3) or a .npy file") from None
        if arr.size == 1:
            arr = arr.reshape(())
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise UsageError(f"--input {name}: the value must hold numbers")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise UsageError(f"--input {name}: the value holds NaN or infinity")
    return arr


def parse_inputs(values: tuple[str, ...]) -> dict[str, np.ndarray]:
    """--input NAME=VALUE: a number, a comma list, or a .npy file (at most MAX_NPY_BYTES); the
    shape is fitted to the model's declared one by the Explainer."""
    out = {}
    for item in values:
        name, sep, val = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--input {item!r} is not NAME=VALUE")
        out[name] = _input_value(name, val)
    return out


class _NoBar:
    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def progress(length: int, show: bool) -> Iterator[Any]:
    """A progress bar on stderr when `show`, else a bar that shows nothing."""
    if not show:
        yield _NoBar()
        return
    with click.progressbar(length=length, label="explaining", file=sys.stderr) as bar:
        yield bar


def prepared_model(model: str, size: tuple[int, int] | None) -> tuple[Any, Any]:
    """(ModelInfo, Prepared) of a model file at its own size, else `size`, else DEFAULT_SIZE."""
    from ..graph.rewrite import prepare
    from ..model import inspect_model, load_model

    m = load_model(model)
    info = inspect_model(m, model)
    return info, prepare(m, info, None if info.fixed_size else (size or DEFAULT_SIZE))


def chunks(items: list, step: int) -> Iterator[list]:
    """`items` in consecutive slices of `step`."""
    for start in range(0, len(items), step):
        yield items[start : start + step]
