"""The journal of a run in progress: OUT/results.incomplete.jsonl, for `explain` and `explain --ray`.

A run that writes many files cannot write them all at once. While it works, OUT holds this journal:
its first line names the run (`explain_signature`: a hash of everything that decides the outputs —
the model's sha256, the method and its options, layers, target, preprocessing, extra inputs, the
output format), then one line per finished image with its records. results.json is written last
(with the same signature) and the journal removed after it, so

- a folder with results.json and no journal holds a finished run, consistent with its files;
- a folder with a journal holds an unfinished one (a full disk, a crash, Ctrl-C, a lost Ray
  cluster): its name says so, and rerunning the same command continues it: images already in the
  journal, whose files are all there, are not redone, and the run's own files may be replaced
  without --overwrite;
- a different command on that folder is refused in one line unless --overwrite starts over.

The local run and the Ray run write the same journal, with the same signature for the same options
(`--format files` on Ray: the same files), so either one may finish what the other began; a Ray run
with `--format parquet` has another signature, and a local run refuses its journal. Images that
failed are not in the journal as done: a rerun tries them again.

A torn last line (the run died while appending) is ignored; so is any line that does not parse.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import OnnxcamError

JOURNAL = "results.incomplete.jsonl"
# what `explain_signature` assumes for Explainer options left out (the Explainer's own defaults)
EXPLAINER_DEFAULTS: dict[str, Any] = {"fuse": "mean", "aug_smooth": False, "eigen_smooth": False, "output": None,
                                      "backend": "onnx"}


def signature(parts: dict[str, Any]) -> str:
    """A stable hash of what decides a run's outputs."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    """The sha256 of a file (the model), read in 1 MiB blocks: results.json's `model_sha256` and
    the first part of a run's signature, local and Ray alike."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def explain_signature(model_sha256: str, method: Any, policy: Any, *, layers: str | Sequence[str] | None, target: str,
                      explainer: Mapping[str, Any] | None = None, per_image: int = 1, det_format: str | None = None,
                      boxes_output: str | None = None, fmt: str = "files") -> str:
    """The signature of one explain run (local or on Ray): model (its sha256), method (a configured
    `CAMMethod`: its name and parameters), layers, the target string, the Explainer options
    (`explainer`: fuse, aug_smooth, eigen_smooth, output, backend, inputs as arrays), maps per image,
    the detection options, the output format, and the input policy (`InputPolicy`: preprocessing,
    preset, labels). Two runs with the same signature write the same files."""
    ex = {**EXPLAINER_DEFAULTS, **{k: v for k, v in (explainer or {}).items() if k != "inputs"}}
    inputs = (explainer or {}).get("inputs") or {}
    layer_list = [] if layers is None else [layers] if isinstance(layers, str) else list(layers)
    return signature({
        "model_sha256": model_sha256, "method": method.name,
        "method_options": {k: v for k, v in sorted(vars(method).items()) if not k.startswith("_")},
        "layers": layer_list, "target": target, **ex, "per_image": per_image, "det_format": det_format,
        "boxes_output": boxes_output, "format": fmt, **policy.describe(), "preset": vars(policy.preset),
        "labels": _digest("\n".join(policy.labels or []).encode()),
        "inputs": {k: _digest(np.ascontiguousarray(v).tobytes()) + str(np.shape(v)) for k, v in sorted(inputs.items())},
    })


class Journal:
    """OUT's journal for one run (see the module docstring). `out` is an onnxcam.output.OutputDir;
    `sig` the run's signature (`explain_signature`); `command` names the run for people."""

    def __init__(self, out: Any, sig: str, command: str) -> None:
        self.out = out
        self.sig = sig
        self.command = command
        self.done: dict[str, dict[str, Any]] = {}
        self.resuming = False
        self.started = False
        self.overwrite = False

    @property
    def path(self) -> Path:
        return self.out.path(JOURNAL)

    def exists(self) -> bool:
        p = self.path
        return p.is_file() and not p.is_symlink()

    def _read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """(header, entries), line by line: memory grows with the entries kept, not the file."""
        entries: list[dict[str, Any]] = []
        try:
            with open(self.path, "rb") as f:
                for raw in f:
                    try:
                        v = json.loads(raw.decode("utf-8", "replace"))
                    except ValueError:
                        continue
                    if isinstance(v, dict):
                        entries.append(v)
        except OSError as exc:
            raise OnnxcamError(f"cannot read {self.out.shown(JOURNAL)}: {exc.strerror}") from None
        header = entries[0] if entries and "signature" in entries[0] else None
        return header, entries[1:] if header else entries

    def open(self, overwrite: bool) -> None:
        """Before the run: take up the journal of the same unfinished run (refusing another run's
        without `overwrite`). Nothing is written until `start`."""
        self.overwrite = overwrite
        if self.exists() and not overwrite:
            header, entries = self._read()
            if header is None or header.get("signature") != self.sig:
                what = f" ({header['command']})" if header and isinstance(header.get("command"), str) else ""
                raise OnnxcamError(
                    f"{self.out.shown(JOURNAL)}: the folder holds an unfinished run of another command{what}, or of "
                    f"other options; rerun that command to finish it, or pass --overwrite to start over"
                )
            for e in entries:
                if isinstance(e.get("key"), str):
                    self.done[e["key"]] = e
            self.resuming = True

    def start(self) -> None:
        """Just before the run writes its first file: a new journal (a resumed one is kept), so a
        run that fails before writing anything leaves OUT as it was."""
        if self.started:
            return
        self.started = True
        if self.resuming:
            return
        if self.exists():  # --overwrite: the old run's journal goes with it
            os.unlink(self.path)
        header = {"signature": self.sig, "command": self.command}
        self.out.write_text(JOURNAL, json.dumps(header) + "\n")

    def finished(self, key: str, files: Iterable[str]) -> dict[str, Any] | None:
        """The journal entry of `key` when its run finished it and every file it wrote is there."""
        e = self.done.get(key)
        if e is None or e.get("errors"):
            return None
        for f in files:
            p = Path(f)
            if not p.is_file() or p.is_symlink():
                return None
        return e

    def record(self, key: str, entry: dict[str, Any]) -> None:
        """Append one finished item (flushed, so a crash right after keeps it)."""
        self.record_many([(key, entry)])

    def record_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Append finished items in one write (a Ray batch: one system call, not one per image)."""
        if not items:
            return
        self.start()
        text = "".join(json.dumps({"key": k, **e}, allow_nan=False, default=str) + "\n" for k, e in items)
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path, flags)
        try:
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    def close(self) -> None:
        """The run is complete (results.json written): the journal goes."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
