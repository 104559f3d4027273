"""Every CAM method's cost as a ratio to plain onnxruntime inference of the same model and batch.

For each model (the bundled MobileNetV2 and the ResNet-50 of bench/resnet50.py) and each batch
size, a stock onnxruntime session on the original model ("plain") and `Explainer(method).explain`
run in the same process with the same intra-op thread count, interleaved: round after round, the
plain session's block and the method's block, in alternating order. A block is a few untimed
calls (at least `--settle` seconds, so that the other session's spinning worker threads and the
idle vCPUs do not land in it; skipped for calls longer than a second) and then one timed call.
The figure per method is the median over rounds of (method time / plain time of the same round):
a ratio of neighbours in time, which holds on a loaded machine where absolute times do not.

Methods whose one call is longer than `--slow` seconds get `--slow-rounds` rounds (default 2).
Methods that loop over channels with full forward passes (Score-CAM, SS-CAM, IS-CAM) are timed
with `max_N` when the library has it (marked); their full cost is estimated, not run: one plain
forward of a batch of `batch_size` masked images, times ⌈C / batch_size⌉ per image, times the
method's samples — marked "est." in the table.

The table goes to stdout and, with --readme, into bench/README.md between the markers
<!-- bench_methods:begin --> and <!-- bench_methods:end -->; the numbers to bench/methods.json.

    python bench/bench_methods.py [--threads 2] [--rounds 7] [--models resnet50] [--batches 1 8]
                                  [--methods gradcam fullgrad] [--readme]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import onnxcam  # noqa: E402
from onnxcam.methods import METHODS, get_method  # noqa: E402

from bench_gradcam import MOBILENET, OtherLoad, cpu_count, cpu_name, load_average, plain_session  # noqa: E402
from resnet50 import build_resnet50  # noqa: E402
from timing import timed_block  # noqa: E402

JSON = HERE / "methods.json"
README = HERE / "README.md"
BEGIN, END = "<!-- bench_methods:begin -->", "<!-- bench_methods:end -->"
CHANNEL_LOOPS = ("scorecam", "sscam", "iscam")
# the attention methods read a vision transformer's attention: not applicable to these CNNs
CNN_METHODS = sorted(n for n in METHODS if type(get_method(n)).__module__ != "onnxcam.methods.transformer")


def paired_ratio(plain: Callable[[], object], method: Callable[[], object], rounds: int, settle_s: float,
                 clock: Callable[[], float] = time.perf_counter) -> dict:
    """Median over rounds of method time / plain time, the two timed next to each other, on
    `clock` (wall time, or this process's CPU time)."""
    def block(fn: Callable[[], object], slow: bool) -> float:
        return timed_block(fn, slow, settle_s, clock)

    t0 = time.perf_counter()
    method()
    slow = time.perf_counter() - t0 > 1.0
    pm, mm, ratios = [], [], []
    for r in range(rounds):
        if r % 2:
            m = block(method, slow)
            p = block(plain, False)
        else:
            p = block(plain, False)
            m = block(method, slow)
        pm.append(p * 1e3)
        mm.append(m * 1e3)
        ratios.append(m / p)
    return {"ratio": statistics.median(ratios), "method_ms": statistics.median(mm), "plain_ms": statistics.median(pm),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "rounds": rounds}


def make_method(name: str, max_n: int | None):
    """The method instance to time: SS-CAM / IS-CAM / Score-CAM with max_N where given."""
    m = get_method(name)
    if name in CHANNEL_LOOPS:
        if not max_n or max_n < 1 or not hasattr(m, "max_N"):
            return None  # no timed row (the full method is only estimated)
        m.max_N = max_n
    return m


def estimate_channel_loop(ex: onnxcam.Explainer, name: str, plain, x: np.ndarray, feeds_name: str,
                          clock: Callable[[], float] = time.perf_counter) -> dict:
    """Full Score-CAM-family cost, estimated: ⌈C/B⌉ forwards of B masked images per image and sample."""
    m = get_method(name)
    b = getattr(m, "batch_size", None) or 32
    samples = {"sscam": getattr(m, "num_samples", 35), "iscam": getattr(m, "num_samples", 10)}.get(name, 1)
    c = int(ex.prepared((x.shape[2], x.shape[3])).layer(ex.layer_name).channels)  # C, without running the method
    xb = np.repeat(x[:1], b, axis=0)
    plain.run(None, {feeds_name: xb})
    ts = []
    for _ in range(3):
        t0 = clock()
        plain.run(None, {feeds_name: xb})
        ts.append(clock() - t0)
    ms = statistics.median(ts) * 1e3 * math.ceil(c / b) * samples * len(x)
    return {"method_ms": ms, "estimated": True, "channels": c, "batch_size": b, "samples": samples}


def run(models: list[str], batches: list[int], methods: list[str], threads: int, rounds: int, settle: float,
        slow_s: float, slow_rounds: int, max_n: int, clock: Callable[[], float] = time.perf_counter) -> list[dict]:
    paths = {"mobilenet_v2": MOBILENET}
    if "resnet50" in models:
        paths["resnet50"] = build_resnet50()
    rows = []
    rng = np.random.default_rng(0)
    for model in models:
        path = Path(paths[model])
        plain = plain_session(path.read_bytes(), threads)
        name_in = plain.get_inputs()[0].name
        for n in batches:
            x = rng.standard_normal((n, 3, 224, 224), dtype=np.float32)
            feeds = {name_in: x}
            plain_fn = lambda: plain.run(None, feeds)  # noqa: E731
            for _ in range(3):
                plain_fn()
            for name in methods:
                row = {"model": model, "batch": n, "method": name}
                others = OtherLoad()
                if name in CHANNEL_LOOPS:
                    ex = onnxcam.Explainer(str(path), method=name, providers=["CPUExecutionProvider"], threads=threads)
                    est = estimate_channel_loop(ex, name, plain, x, name_in, clock)
                    p = statistics.median([_timed(plain_fn, clock) for _ in range(5)])
                    row.update(est, plain_ms=p, ratio=est["method_ms"] / p)
                    rows.append(dict(row, other_load_cores=others.cores()))
                    _log(rows[-1])
                    inst = make_method(name, max_n)
                    if inst is None:
                        continue
                    row = {"model": model, "batch": n, "method": f"{name} (max_N={max_n})"}
                    others = OtherLoad()
                    method = inst
                else:
                    method = get_method(name)
                ex = onnxcam.Explainer(str(path), method=method, providers=["CPUExecutionProvider"], threads=threads)
                ex.explain(x)  # builds the sessions
                t0 = time.perf_counter()
                ex.explain(x)
                one = time.perf_counter() - t0
                k = slow_rounds if one > slow_s else rounds
                row.update(paired_ratio(plain_fn, lambda: ex.explain(x), k, settle, clock))
                row["other_load_cores"] = others.cores()
                rows.append(row)
                _log(row)
                del ex
    return rows


def _timed(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    t0 = clock()
    fn()
    return (clock() - t0) * 1e3


def _log(r: dict) -> None:
    est = " (est.)" if r.get("estimated") else f" [{r['rounds']} rounds, {r['ratio_min']:.2f}–{r['ratio_max']:.2f}]"
    print(f"[{r['model']} b{r['batch']}] {r['method']:<24} {r['ratio']:9.2f}× plain  "
          f"({r['method_ms']:.1f} ms vs {r['plain_ms']:.1f} ms){est}  other load {r['other_load_cores']}",
          file=sys.stderr, flush=True)


def table(rows: list[dict], models: list[str], batches: list[int]) -> str:
    cols = [(m, b) for m in models for b in batches]
    by = {(r["model"], r["batch"], r["method"]): r for r in rows}
    names = list(dict.fromkeys(r["method"] for r in rows))
    head = "| method | " + " | ".join(f"{m} b{b}" for m, b in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for name in names:
        cells = []
        for m, b in cols:
            r = by.get((m, b, name))
            if r is None:
                cells.append("")
            elif r.get("estimated"):
                cells.append(f"≈ {r['ratio']:,.0f} (est.)")
            else:
                cells.append(f"{r['ratio']:.2f}" if r["ratio"] < 100 else f"{r['ratio']:,.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    plains = []
    for m, b in cols:
        ps = [r["plain_ms"] for r in rows if (r["model"], r["batch"]) == (m, b)]
        plains.append(f"{statistics.median(ps):.1f} ms" if ps else "")
    lines.append("| *plain inference (median)* | " + " | ".join(plains) + " |")
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = README.read_text()
    if BEGIN in readme and END in readme:
        pre, rest = readme.split(BEGIN, 1)
        post = rest.split(END, 1)[1]
        readme = pre + BEGIN + "\n" + text + "\n" + END + post
    else:
        readme = readme.rstrip("\n") + "\n\n" + BEGIN + "\n" + text + "\n" + END + "\n"
    README.write_text(readme)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=cpu_count())
    ap.add_argument("--rounds", type=int, default=7, help="paired rounds per method (median of the ratios)")
    ap.add_argument("--settle", type=float, default=0.1, help="untimed calls before each timed one (seconds)")
    ap.add_argument("--slow", type=float, default=5.0, help="a call longer than this (s) gets --slow-rounds rounds")
    ap.add_argument("--slow-rounds", type=int, default=2)
    ap.add_argument("--max-n", type=int, default=32, help="max_N for the Score-CAM family's timed rows (0: none)")
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"], choices=["mobilenet_v2", "resnet50"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--methods", nargs="+", default=CNN_METHODS)
    ap.add_argument("--json", default=str(JSON))
    ap.add_argument("--readme", action="store_true", help="write the table into bench/README.md")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with this process's CPU time, not the wall clock (with --threads 1 and --settle 0: "
                         "the work each call does, robust to other processes on a loaded machine)")
    a = ap.parse_args(argv)
    unknown = set(a.methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}")
    load_before = load_average()
    t0 = time.perf_counter()
    rows = run(a.models, a.batches, a.methods, a.threads, a.rounds, a.settle, a.slow, a.slow_rounds, a.max_n,
               time.process_time if a.cpu_time else time.perf_counter)
    total = time.perf_counter() - t0
    tab = table(rows, a.models, a.batches)
    loads = [r["other_load_cores"] for r in rows if r.get("other_load_cores") is not None]
    note = (f"`python bench/bench_methods.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {cpu_count()} vCPUs ({cpu_name()}), "
            f"{a.threads} threads, onnxruntime {ort.__version__}, CPU provider; load average "
            f"{load_before[0] if load_before else '?'} before, {load_average()[0] if load_average() else '?'} after; "
            f"other processes kept {statistics.median(loads) if loads else '?'} cores busy (median over rows); "
            f"{total:.0f} s in total. Each cell: method {'CPU' if a.cpu_time else 'wall'} time ÷ plain inference "
            f"{'CPU' if a.cpu_time else 'wall'} time of the same model and batch "
            f"(median over {a.rounds} interleaved rounds; {a.slow_rounds} for calls over {a.slow:g} s).")
    print(tab)
    print("\n" + note)
    if a.json:
        Path(a.json).write_text(json.dumps({"note": note, "rows": rows}, indent=2) + "\n")
    if a.readme:
        write_readme(note + "\n\n" + tab)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
