"""The journal of a run in progress: OUT/results.incomplete.jsonl.

A run that writes many files cannot write them all at once. While it works, OUT holds this journal:
its first line names the run (a signature of everything that decides the outputs: the model's
sha256, the method, layer, target, preprocessing, ...), then one line per finished image with its
records. results.json is written last and the journal removed after it, so

- a folder with results.json and no journal holds a finished run, consistent with its files;
- a folder with a journal holds an unfinished one (a full disk, a crash, Ctrl-C): its name says so,
  and rerunning the same command continues it: images already in the journal, whose files are all
  there, are not redone, and the run's own files may be replaced without --overwrite;
- a different command on that folder is refused unless --overwrite starts over.

A torn last line (the run died while appending) is ignored; so is any line that does not parse.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from .errors import OnnxcamError

JOURNAL = "results.incomplete.jsonl"


def signature(parts: dict[str, Any]) -> str:
    """A stable hash of what decides a run's outputs."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Journal:
    """OUT's journal for one run (see the module docstring). `out` is an onnxcam.output.OutputDir."""

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
        try:
            with open(self.path, "rb") as f:
                lines = f.read(256 << 20).decode("utf-8", "replace").split("\n")
        except OSError as exc:
            raise OnnxcamError(f"cannot read {self.out.shown(JOURNAL)}: {exc.strerror}") from None
        entries = []
        for line in lines:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if isinstance(v, dict):
                entries.append(v)
        header = entries[0] if entries and "signature" in entries[0] else None
        return header, entries[1:] if header else entries

    def open(self, overwrite: bool) -> None:
        """Before the run: take up the journal of the same unfinished run (refusing another run's
        without `overwrite`). Nothing is written until `start`."""
        self.overwrite = overwrite
        if self.exists() and not overwrite:
            header, entries = self._read()
            if header is None or header.get("signature") != self.sig:
                raise OnnxcamError(
                    f"{self.out.shown(JOURNAL)}: the folder holds an unfinished run of another command; "
                    f"rerun that command to finish it, or pass --overwrite to start over"
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
        self.start()
        line = json.dumps({"key": key, **entry}, allow_nan=False, default=str) + "\n"
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path, flags)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    def close(self) -> None:
        """The run is complete (results.json written): the journal goes."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
