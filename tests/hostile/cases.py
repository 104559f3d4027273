"""The hostile cases: each builds its files in an empty folder and says what the CLI must do.

A case is a function `build(case_dir) -> Spec`. The runner (tests/test_hostile.py) snapshots the
folder, runs the CLI in its own process, and checks the exit code, the stderr contract, that
nothing outside OUT changed (and nothing in `protect` inside it), that results.json is strict JSON
whose records are all there, distinct, inside OUT and of the right image, and the peak RSS.

Exit codes, as the README documents them: 0 success; 1 an error (a model, an image, the output
folder, the runtime; one bad image among others: the rest are done, exit 1); 2 a usage error (an
option or a file named by an option: --target, --size, --labels, --input, --boxes, --config,
--layer; an output folder that would hold the inputs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from onnx import TensorProto, helper

from . import images as I
from . import models as M


@dataclass
class Spec:
    args: list
    code: int | set[int]
    out: Path | None = None
    errors: int | None = None          # error lines expected (default: 1 when code != 0)
    good: list[Path] = field(default_factory=list)   # inputs that must have a result
    bad: list[Path] = field(default_factory=list)    # inputs that must be listed as errors
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # image → (h, w) of its overlay
    protect: list[Path] = field(default_factory=list)  # files inside OUT that must not change
    fsize: int | None = None
    restricted: bool = False           # permissions apply (also when the suite runs as root)
    results: bool | None = None        # results.json must (True) / must not (False) exist
    out_empty: bool = False            # a fatal error before any work: no file in OUT
    timeout: float = 120


CASES: dict[str, Callable[[Path], Spec]] = {}


def case(name: str):
    def reg(f):
        assert name not in CASES, name
        CASES[name] = f
        return f

    return reg


def _photo(d: Path, rel: str, h: int = 40, w: int = 56, seed: int = 0) -> tuple[Path, tuple[int, int]]:
    p = I.photo(d / rel, h, w, seed)
    return p, (h, w)


def _explain(d: Path, model: Path, bad: list[Path] | None = None, code: int = 1, extra: tuple = (), **kw) -> Spec:
    """explain MODEL good.png [bad...] -o out: the bad files are errors, the good one is done."""
    g, hw = _photo(d, "in/good.png")
    bad = bad or []
    out = d / "out"
    kw.setdefault("results", True)  # the good image's result is written whatever the bad ones do
    return Spec(["explain", model, g, *bad, "-o", out, *extra], code, out, good=[g], bad=bad,
                sizes={os.path.realpath(g): hw}, **kw)


def _model_fails(d: Path, model: Path, cmd: str = "explain", checked: bool = False) -> Spec:
    """A model that cannot be explained: exit 1, one line, nothing in OUT. `checked`: `check`
    loads the model and reports the failed layer on stdout (FAIL ...), no error line."""
    if cmd != "explain":
        return Spec([cmd, model], 1, errors=0 if checked else None)
    g, _ = _photo(d, "in/good.png")
    out = d / "out"
    return Spec(["explain", model, g, "-o", out], 1, out, out_empty=True, results=False)


def _runtime_loads(model: Path) -> bool:
    """Whether the installed onnxruntime creates a session for `model` (IR 14 is refused by
    onnxruntime ≤ 1.31 and read by 1.32)."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return True
    except Exception:  # noqa: BLE001  (any refusal counts)
        return False


def _ir14(d: Path, cmd: str) -> Spec:
    """An IR 14 model (onnx 1.23's default): explained like any other where the installed
    onnxruntime reads it, else one line and exit 1 — never a traceback."""
    model = M.ir14(d / "m.onnx")
    if not _runtime_loads(model):
        return _model_fails(d, model, cmd, checked=cmd == "check")
    return _explain(d, model, code=0) if cmd == "explain" else Spec([cmd, model], 0)


for _cmd in ("explain", "check"):
    case(f"model-ir14-{_cmd}")(lambda d, _c=_cmd: _ir14(d, _c))

# -- hostile models -------------------------------------------------------------------------------
for _name, _make in {
    "not-onnx": M.not_onnx, "empty": M.empty, "png-named-onnx": M.png_named_onnx,
    "truncated-60": M.truncated, "truncated-10": lambda p: M.truncated(p, 0.1),
    "cycle": M.cycle, "custom-op": M.custom_op,
}.items():
    for _cmd in ("explain", "info", "layers", "check"):
        if _cmd in ("info", "layers") and _name in ("custom-op", "ir14"):
            continue  # info and layers only read the graph: those models have a valid one (below)
        case(f"model-{_name}-{_cmd}")(lambda d, _m=_make, _c=_cmd, _k=_name in ("custom-op", "ir14"):
                                       _model_fails(d, _m(d / "m.onnx"), _c, checked=_k and _c == "check"))
for _name, _make in {"custom-op": M.custom_op, "ir14": M.ir14}.items():
    for _cmd in ("info", "layers"):
        case(f"model-{_name}-{_cmd}")(lambda d, _m=_make, _c=_cmd: Spec([_c, _m(d / "m.onnx")], 0))

for _name, _make in {
    "external-outside": M.external_outside, "external-absolute": M.external_absolute,
    "external-symlink": M.external_symlink, "external-missing": M.external_missing,
}.items():
    case(f"model-{_name}")(lambda d, _m=_make: _model_fails(d, _m(d)))


@case("model-is-folder")
def _(d: Path) -> Spec:
    (d / "m.onnx").mkdir()
    s = _model_fails(d, d / "m.onnx")
    s.code = 2  # a folder where the command line names a model file
    return s


@case("model-is-fifo")
def _(d: Path) -> Spec:
    os.mkfifo(d / "m.onnx")
    return _model_fails(d, d / "m.onnx")


@case("model-is-dev-zero")
def _(d: Path) -> Spec:
    return _model_fails(d, Path("/dev/zero"))


@case("model-nan-outputs")
def _(d: Path) -> Spec:
    m = M.nonfinite(d / "m.onnx", float("nan"))
    g, _ = _photo(d, "in/good.png")
    out = d / "out"
    return Spec(["explain", m, g, "-o", out], 1, out, bad=[g])


@case("model-inf-outputs")
def _(d: Path) -> Spec:
    m = M.nonfinite(d / "m.onnx", float("inf"))
    g, _ = _photo(d, "in/good.png")
    out = d / "out"
    return Spec(["explain", m, g, "-o", out], 1, out, bad=[g])


@case("model-nan-eval")
def _(d: Path) -> Spec:
    m = M.nonfinite(d / "m.onnx", float("nan"))
    g, _ = _photo(d, "in/good.png")
    return Spec(["eval", m, g, "--steps", "5", "--json"], 1)


@case("model-opset7-ir3")
def _(d: Path) -> Spec:
    return _explain(d, M.opset7_ir3(d / "m.onnx"), code=0)


@case("model-opset7-ir3-export")
def _(d: Path) -> Spec:
    m = M.opset7_ir3(d / "m.onnx")
    return Spec(["export", m, "-o", d / "out" / "x.onnx"], 0, d / "out")


@case("model-huge-input")
def _(d: Path) -> Spec:
    return _model_fails(d, M.huge_input(d / "m.onnx"))


@case("model-huge-input-eval")
def _(d: Path) -> Spec:
    g, _ = _photo(d, "in/good.png")
    return Spec(["eval", M.huge_input(d / "m.onnx"), g, "--steps", "3"], 1)


@case("model-huge-labels")
def _(d: Path) -> Spec:
    return _model_fails(d, M.huge_labels(d / "m.onnx"))


@case("model-huge-labels-info")
def _(d: Path) -> Spec:
    return Spec(["info", M.huge_labels(d / "m.onnx")], 1)


for _key, _meta in M.BAD_METADATA.items():
    case(f"metadata-{_key}")(
        lambda d, _md=_meta: _model_fails(d, M.with_metadata(d / "m.onnx", _md, size=("H", "W")))
    )


@case("metadata-labels-control-chars-eval")
def _(d: Path) -> Spec:
    labels = [f"\x1b[31mred\x1b[0m{i}\r\x07" for i in range(10)]
    m = M.with_metadata(d / "m.onnx", {"onnxcam.labels": json.dumps(labels)})
    g, _ = _photo(d, "in/good.png")
    return Spec(["eval", m, g, "--steps", "3"], 0)


def _two_inputs(path: Path, extra_shape: list) -> Path:
    """logits × scale, with `scale` a second float input of shape `extra_shape`."""
    g = M.tiny_graph()
    g.node[-1].output[0] = "raw"
    g.node.append(helper.make_node("Mul", ["raw", "scale"], ["logits"], name="scale_mul"))
    g.input.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, extra_shape))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return M.save(m, path)


# -- fixed batch of 1: every method ---------------------------------------------------------------
def fixed_batch_case(method: str) -> Callable[[Path], Spec]:
    def build(d: Path) -> Spec:
        m = M.fixed_batch1(d / "m.onnx")
        a, ha = _photo(d, "in/a.png", 40, 56, 1)
        b, hb = _photo(d, "in/b.png", 30, 20, 2)
        out = d / "out"
        return Spec(["explain", m, d / "in", "-o", out, "--method", method, "--batch-size", "2"], 0, out,
                    good=[a, b], sizes={os.path.realpath(a): ha, os.path.realpath(b): hb}, results=True)

    return build


# -- hostile images (next to a good one: the good one is done, exit 1, one error line) ------------
for _name, _make in {
    "bomb-32768": I.png_bomb, "header-100000": I.header_only_png, "truncated-png": I.truncated,
    "not-an-image": I.not_an_image, "zero-size": I.zero_size, "fifo": I.fifo,
}.items():
    case(f"image-{_name}")(lambda d, _m=_make: _explain(d, M.good(d / "m.onnx"), [_m(d / "bad.png")]))


@case("image-truncated-jpeg")
def _(d: Path) -> Spec:
    return _explain(d, M.good(d / "m.onnx"), [I.truncated(d / "bad.jpg", 0.6)])


@case("image-unreadable")
def _(d: Path) -> Spec:
    s = _explain(d, M.good(d / "m.onnx"), [I.unreadable(d / "bad.png")])
    s.restricted = True
    return s


@case("image-folder-named-png")
def _(d: Path) -> Spec:
    s = _explain(d, M.good(d / "m.onnx"))
    I.folder(d / "in" / "dir.png")
    I.fifo(d / "in" / "pipe.png")
    s.args[2] = d / "in"  # the folder: the folder and FIFO named like images are not images
    s.code = 0
    s.bad = []
    return s


@case("image-control-chars-in-name")
def _(d: Path) -> Spec:
    return _explain(d, M.good(d / "m.onnx"), [I.not_an_image(d / "evil\x1b[2J\r\nname\x07.png")])


def _odd_format(make: Callable[[Path], Path], suffix: str) -> Callable[[Path], Spec]:
    """An unusual but valid image (16-bit, CMYK, gray + alpha): explained like any other."""
    import cv2

    def build(d: Path) -> Spec:
        s = _explain(d, M.good(d / "m.onnx"), code=0)
        p = make(d / "in" / f"odd{suffix}")
        s.args.insert(3, p)
        s.good.append(p)
        s.sizes[os.path.realpath(p)] = cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[:2]
        return s

    return build


for _name, _make, _sfx in (("png16", I.png16, ".png"), ("cmyk-jpeg", I.cmyk_jpeg, ".jpg"), ("gray-alpha", I.gray_alpha, ".png")):
    case(f"image-{_name}")(_odd_format(_make, _sfx))


@case("image-big-photo-6000")
def _(d: Path) -> Spec:
    """36 megapixels: a legitimate photo must be explained within the memory bound."""
    m = M.good(d / "m.onnx")
    p, hw = _photo(d, "in/big.png", 6000, 6000, 7)
    out = d / "out"
    return Spec(["explain", m, p, "-o", out], 0, out, good=[p], sizes={os.path.realpath(p): hw})


@case("image-bomb-eval")
def _(d: Path) -> Spec:
    g, _ = _photo(d, "in/good.png")
    return Spec(["eval", M.good(d / "m.onnx"), g, I.png_bomb(d / "bad.png"), "--steps", "3", "--json"], 1)


@case("image-unreadable-review")
def _(d: Path) -> Spec:
    _photo(d, "in/good.png")
    I.not_an_image(d / "in" / "bad.png")
    out = d / "out"
    return Spec(["review", M.good(d / "m.onnx"), "--images", d / "in", "-o", out, "--steps", "3"], 1, out)


# -- hostile options --------------------------------------------------------------------------------
def _usage(d: Path, *extra, model: Path | None = None) -> Spec:
    g, _ = _photo(d, "in/good.png")
    out = d / "out"
    model = model or M.good(d / "m.onnx")
    return Spec(["explain", model, g, "-o", out, *extra], 2, out, out_empty=True, results=False)


OPTION_CASES: dict[str, Callable[[Path], Spec]] = {
    "target-huge-int": lambda d: _usage(d, "--target", "1" + "0" * 30),
    "target-out-of-range": lambda d: _usage(d, "--target", "10"),
    "target-negative": lambda d: _usage(d, "--target", "-5"),
    "target-top1000-10-classes": lambda d: _usage(d, "--target", "top1000"),
    "target-top1000-5000-classes": lambda d: _usage(d, "--target", "top1000", model=M.many_classes(d / "m.onnx", 5000)),
    "target-top0": lambda d: _usage(d, "--target", "top0"),
    "target-softmax-huge": lambda d: _usage(d, "--target", "softmax:99999999999999999999"),
    "target-index-garbage": lambda d: _usage(d, "--target", "index:1,,x"),
    "target-seg-on-classifier": lambda d: _usage(d, "--target", "seg:1"),
    "target-det-box-nan": lambda d: _usage(d, "--target", "det:box=nan,0,1,1"),
    "size-huge": lambda d: _usage(d, "--size", "30000x30000", model=M.good(d / "m.onnx", size=("H", "W"))),
    "size-zero": lambda d: _usage(d, "--size", "0x10", model=M.good(d / "m.onnx", size=("H", "W"))),
    "size-garbage": lambda d: _usage(d, "--size", "12xx", model=M.good(d / "m.onnx", size=("H", "W"))),
    "labels-dev-zero": lambda d: _usage(d, "--labels", "/dev/zero"),
    "labels-binary": lambda d: _usage(d, "--labels", _write(d / "labels.txt", bytes(range(256)) * 4)),
    "labels-huge-sparse": lambda d: _usage(d, "--labels", _sparse(d / "labels.txt", 300 << 20)),
    "labels-folder": lambda d: _usage(d, "--labels", _mkdir(d / "labels")),
    "input-no-equals": lambda d: _usage(d, "--input", "scale"),
    "input-unknown-name": lambda d: _usage(d, "--input", "nope=1"),
    "input-garbage": lambda d: _usage(d, "--input", "scale=abc", model=_two_inputs(d / "m.onnx", [1])),
    "input-bad-npy": lambda d: _usage(d, "--input", f"scale={_write(d / 'v.npy', b'garbage')}", model=_two_inputs(d / "m.onnx", [1])),
    "input-pickle-npy": lambda d: _usage(d, "--input", f"scale={_pickle_npy(d / 'v.npy')}", model=_two_inputs(d / "m.onnx", [1])),
    "input-wrong-shape": lambda d: _usage(d, "--input", "scale=1,2,3", model=_two_inputs(d / "m.onnx", [1])),
    "input-nan": lambda d: _usage(d, "--input", "scale=nan", model=_two_inputs(d / "m.onnx", [1])),
    "config-not-json": lambda d: _usage(d, "--config", _write(d / "c.json", b"{not json")),
    "config-dev-zero": lambda d: _usage(d, "--config", "/dev/zero"),
    "config-size-text": lambda d: _usage(d, "--config", _write(d / "c.json", b'{"size": "big"}'), model=M.good(d / "m.onnx", size=("H", "W"))),
    "config-size-huge": lambda d: _usage(d, "--config", _write(d / "c.json", b'{"size": [40000, 40000]}'), model=M.good(d / "m.onnx", size=("H", "W"))),
    "config-mean-text": lambda d: _usage(d, "--config", _write(d / "c.json", b'{"mean": "x"}')),
    "config-std-zero": lambda d: _usage(d, "--config", _write(d / "c.json", b'{"std": [0, 0, 0]}')),
    "config-multiple-zero": lambda d: _usage(d, "--config", _write(d / "c.json", b'{"size": "native", "multiple": 0}'), model=M.good(d / "m.onnx", size=("H", "W"))),
    "config-yaml-garbage": lambda d: _usage(d, "--config", _write(d / "c.yaml", b"size: [1, \nmean: {")),
    "layer-missing": lambda d: _usage(d, "--layer", "no_such_tensor"),
}
for _k, _f in OPTION_CASES.items():
    case(f"option-{_k}")(_f)


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def _sparse(p: Path, size: int) -> Path:
    with open(p, "wb") as f:
        f.truncate(size)
    return p


def _pickle_npy(p: Path) -> Path:
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return p


@case("option-scalar-input-for-shape-1")
def _(d: Path) -> Spec:
    return _explain(d, _two_inputs(d / "m.onnx", [1]), code=0, extra=("--input", "scale=2"))


@case("option-check-layer-missing")
def _(d: Path) -> Spec:
    return Spec(["check", M.good(d / "m.onnx"), "--layer", "no_such_tensor"], 2)


@case("option-export-layer-missing")
def _(d: Path) -> Spec:
    return Spec(["export", M.good(d / "m.onnx"), "-o", d / "out" / "x.onnx", "--layer", "nope"], 2, d / "out",
                out_empty=True)


@case("option-eval-steps-huge")
def _(d: Path) -> Spec:
    g, _ = _photo(d, "in/good.png")
    return Spec(["eval", M.good(d / "m.onnx"), g, "--steps", "1000000000"], 2)


@case("option-eval-tolerance-nan")
def _(d: Path) -> Spec:
    g, _ = _photo(d, "in/good.png")
    return Spec(["eval", M.good(d / "m.onnx"), g, "--steps", "3", "--tolerance", "nan"], 2)


for _name, _content in {
    "not-json": b"[[[", "list": b"[1, 2]", "three-numbers": b'{"good.png": [1, 2, 3]}',
    "nan": b'{"good.png": [NaN, 0, 5, 5]}', "strings": b'{"good.png": ["a", "b", "c", "d"]}',
    "inverted": b'{"good.png": [30, 30, 5, 5]}', "huge-nesting": b"[" * 100000,
}.items():
    case(f"option-boxes-{_name}")(lambda d, _c=_content: Spec(
        ["eval", M.good(d / "m.onnx"), _photo(d, "in/good.png")[0], "--steps", "3", "--boxes", _write(d / "b.json", _c)], 2))


@case("option-boxes-dev-zero")
def _(d: Path) -> Spec:
    return Spec(["eval", M.good(d / "m.onnx"), _photo(d, "in/good.png")[0], "--steps", "3", "--boxes", "/dev/zero"], 2)


@case("option-batch-size-huge")
def _(d: Path) -> Spec:
    return _explain(d, M.good(d / "m.onnx"), code=0, extra=("--batch-size", "1000000000000"))


# -- hostile output folders -----------------------------------------------------------------------
def _planted(d: Path, name: str, overwrite: bool, dangling: bool = False) -> Spec:
    """OUT/<name> is a symlink to a file outside OUT: never followed (exit 1, outside untouched)."""
    m = M.good(d / "m.onnx")
    out = d / "out"
    out.mkdir()
    (d / "outside").mkdir()
    victim = d / "outside" / "victim"
    if not dangling:
        victim.write_text("precious\n")
    os.symlink(victim, out / name)
    g, hw = _photo(d, "in/good.png")
    return Spec(["explain", m, g, "-o", out, *(["--overwrite"] if overwrite else [])], 1, out)


for _target in ("results.json", "good.overlay.png", "good.heatmap.npy"):
    for _ow in (False, True):
        case(f"out-symlink-{_target}{'-overwrite' if _ow else ''}")(lambda d, _t=_target, _o=_ow: _planted(d, _t, _o))
    case(f"out-symlink-dangling-{_target}")(lambda d, _t=_target: _planted(d, _t, False, dangling=True))


@case("out-symlink-subfolder")
def _(d: Path) -> Spec:
    """OUT/a is a link to a folder outside: outputs of in/a/*.png must not land there."""
    m = M.good(d / "m.onnx")
    _photo(d, "in/a/x.png")
    _photo(d, "in/b/x.png", 30, 20, 1)
    (d / "outside").mkdir()
    out = d / "out"
    out.mkdir()
    os.symlink(d / "outside", out / "a")
    os.symlink(d / "outside", out / "x")
    return Spec(["explain", m, d / "in", "-o", out, "--overwrite"], 1, out)


@case("out-is-symlink-loop")
def _(d: Path) -> Spec:
    os.symlink(d / "loop", d / "loop")
    g, _ = _photo(d, "in/good.png")
    return Spec(["explain", M.good(d / "m.onnx"), g, "-o", d / "loop"], 1)


@case("out-parent-is-file")
def _(d: Path) -> Spec:
    _write(d / "file", b"x")
    g, _ = _photo(d, "in/good.png")
    return Spec(["explain", M.good(d / "m.onnx"), g, "-o", d / "file" / "out"], 1)


@case("out-is-file")
def _(d: Path) -> Spec:
    _write(d / "file", b"x")
    g, _ = _photo(d, "in/good.png")
    return Spec(["explain", M.good(d / "m.onnx"), g, "-o", d / "file"], 2)


@case("out-read-only")
def _(d: Path) -> Spec:
    s = _explain(d, M.good(d / "m.onnx"), code=1)
    s.out.mkdir()
    os.chmod(s.out, 0o555)
    s.restricted = True
    s.good, s.results = [], None
    return s


@case("out-equals-input")
def _(d: Path) -> Spec:
    m = M.good(d / "m.onnx")
    a, _ = _photo(d, "in/a.png")
    b, _ = _photo(d, "in/a.overlay.png", 30, 20, 1)  # an input named like an output
    return Spec(["explain", m, d / "in", "-o", d / "in", "--overwrite"], 2, d / "in", protect=[a, b], results=False)


@case("out-output-name-is-input")
def _(d: Path) -> Spec:
    m = M.good(d / "m.onnx")
    a, _ = _photo(d, "a.png")
    b, _ = _photo(d, "a.overlay.png", 30, 20, 1)
    return Spec(["explain", m, a, b, "-o", d, "--overwrite"], 2, d, protect=[a, b, m], results=False)


@case("out-inside-input")
def _(d: Path) -> Spec:
    """-o in/results: the outputs are not taken as inputs, now or on a rerun."""
    m = M.good(d / "m.onnx")
    a, ha = _photo(d, "in/a.png")
    out = d / "in" / "results"
    return Spec(["explain", m, d / "in", "-o", out], 0, out, good=[a], sizes={os.path.realpath(a): ha})


@case("out-same-names-in-subfolders")
def _(d: Path) -> Spec:
    m = M.good(d / "m.onnx")
    files = [_photo(d, "in/a/x.png", 40, 56, 1), _photo(d, "in/b/x.png", 30, 20, 2), _photo(d, "in/x.png", 25, 33, 3)]
    out = d / "out"
    return Spec(["explain", m, d / "in", "-o", out], 0, out, good=[f for f, _ in files],
                sizes={os.path.realpath(f): hw for f, hw in files}, results=True)


@case("out-dedup-suffix-collision")
def _(d: Path) -> Spec:
    m = M.good(d / "m.onnx")
    files = [_photo(d, "in/x.png", 40, 56, 1), _photo(d, "in/x-2.png", 30, 20, 2), _photo(d, "in/sub/x.png", 25, 33, 3),
             _photo(d, "in/x.jpg", 22, 27, 4), _photo(d, "in/x.top1.png", 26, 21, 5)]
    out = d / "out"
    return Spec(["explain", m, d / "in", "-o", out, "--target", "top2"], 0, out, good=[f for f, _ in files],
                sizes={os.path.realpath(f): hw for f, hw in files}, results=True)


@case("out-same-files-twice")
def _(d: Path) -> Spec:
    m = M.good(d / "m.onnx")
    a, ha = _photo(d, "in/a.png")
    out = d / "out"
    return Spec(["explain", m, a, d / "in", a, "-o", out], 0, out, good=[a], sizes={os.path.realpath(a): ha})


@case("out-export-symlink")
def _(d: Path) -> Spec:
    (d / "outside").mkdir()
    victim = _write(d / "outside" / "victim.onnx", b"precious")
    (d / "out").mkdir()
    os.symlink(victim, d / "out" / "x.onnx")
    return Spec(["export", M.good(d / "m.onnx"), "-o", d / "out" / "x.onnx", "--overwrite"], 1, d / "out")


@case("out-export-hardlink-to-model")
def _(d: Path) -> Spec:
    m = M.good(d / "m.onnx")
    (d / "out").mkdir()
    os.link(m, d / "out" / "x.onnx")
    return Spec(["export", m, "-o", d / "out" / "x.onnx", "--overwrite"], 2, d / "out", protect=[d / "out" / "x.onnx"])


@case("out-review-symlink-index")
def _(d: Path) -> Spec:
    (d / "outside").mkdir()
    victim = _write(d / "outside" / "victim.html", b"precious")
    out = d / "out"
    out.mkdir()
    os.symlink(victim, out / "index.html")
    _photo(d, "in/a.png")
    return Spec(["review", M.good(d / "m.onnx"), "--images", d / "in", "-o", out, "--steps", "3", "--overwrite"], 1, out)


@case("out-review-same-named-models")
def _(d: Path) -> Spec:
    a = M.good(d / "a" / "m.onnx", seed=1)
    b = M.good(d / "b" / "m.onnx", seed=2)
    _photo(d, "in/a.png")
    out = d / "out"
    return Spec(["review", a, b, "--images", d / "in", "-o", out, "--steps", "3", "--json"], 0, out)
