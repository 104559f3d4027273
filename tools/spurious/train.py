"""Train the same small CNN twice — "biased" (spurious training split) and "unbiased" (balanced
split) — and export both to ONNX under ``models/spurious/``.

Data come from ``make_dataset.py`` (same folder), generated in memory with fixed seeds. Inputs are
RGB in [0, 1] with no mean/std (onnxcam preset "unit"). CPU only; 15-25 s per model on
two idle cores. Deterministic (checked on this machine): a rebuild gives byte-identical ONNX files.

    /work/venvs/tv/bin/python -m tools.spurious.train            # train, export, print metrics
    /work/venvs/tv/bin/python -m tools.spurious.train --json out.json

Prints train/test accuracy and the accuracy on test images where the mark contradicts the class
(cats without the mark, cups with it): the biased model should fail there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from tools import common
from tools.spurious import make_dataset as md

ROOT = str(common.ROOT)
OUT_DIR = os.path.join(ROOT, "models", "spurious")
N_TRAIN = 3000
N_TEST = 2000
EPOCHS = 5
BATCH = 64
LR = 2e-3
SEED = 0


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    """conv-bn-relu x4 (two 2x2 max-pools: 64 -> 16), global average pooling, linear."""

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            block(3, 8), nn.MaxPool2d(2),
            block(8, 16), nn.MaxPool2d(2),
            block(16, 32),
            block(32, 32),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def train(x: np.ndarray, y: np.ndarray, seed: int = SEED, epochs: int = EPOCHS) -> SmallCNN:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = SmallCNN(len(md.CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps = epochs * ((len(x) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        tot = 0.0
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            xb, yb = xt[idx], yt[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5  # horizontal flip keeps marks in corners
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        print(f"  epoch {ep + 1}/{epochs} loss {tot / len(x):.4f}", file=sys.stderr)
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return np.concatenate([model(torch.from_numpy(x[i : i + 256])).argmax(1).numpy() for i in range(0, len(x), 256)])


def metrics(model: nn.Module, data: dict) -> dict:
    out = {}
    for name, (x, y, m) in data.items():
        p = predict(model, x)
        out[f"{name}_acc"] = float((p == y).mean())
        if name == "test":
            conflict = (y == md.MARK_CLASS) != m  # cats without the mark, cups with it
            out["test_conflict_acc"] = float((p[conflict] == y[conflict]).mean())
            out["test_agree_acc"] = float((p[~conflict] == y[~conflict]).mean())
            out["test_n_conflict"] = int(conflict.sum())
    return out


def export(model: nn.Module, path: str, doc: str) -> None:
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, md.SIZE, md.SIZE),),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )
    m = onnx.load(path)
    m.doc_string = doc
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, {"onnxcam.labels": json.dumps(md.CLASSES), "onnxcam.preset": "unit"})
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="also write the metrics here")
    ap.add_argument("--out", default=OUT_DIR)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--seed", type=int, default=SEED, help="training seed (the data do not change)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    splits = {
        "train": md.to_arrays(md.make_split("train", N_TRAIN)),
        "balanced": md.to_arrays(md.make_split("balanced", N_TRAIN)),
        "test": md.to_arrays(md.make_split("test", N_TEST)),
    }
    print(f"data: {time.time() - t0:.1f}s", file=sys.stderr)
    for name, (_, y, m) in splits.items():
        agree = float(((y == md.MARK_CLASS) == m).mean())
        print(f"  {name}: n={len(y)} mark={m.mean():.3f} mark-agrees-with-class={agree:.3f}", file=sys.stderr)
    results = {}
    for kind, split in (("biased", "train"), ("unbiased", "balanced")):
        t0 = time.time()
        print(f"training {kind} on split '{split}'", file=sys.stderr)
        x, y, _ = splits[split]
        model = train(x, y, seed=a.seed, epochs=a.epochs)
        r = {"train_split": split, "train_acc": metrics(model, {"t": splits[split]})["t_acc"]}
        r.update(metrics(model, {"test": splits["test"]}))
        r["seconds"] = round(time.time() - t0, 1)
        path = os.path.join(a.out, f"{kind}.onnx")
        export(
            model,
            path,
            f"onnxcam spurious-cue demo: SmallCNN trained on the '{split}' split "
            "(tools/spurious/train.py); classes cat/cup; input RGB in [0,1], 64x64",
        )
        results[kind] = r
        print(f"{kind}: {json.dumps(r)}", file=sys.stderr)
    print(json.dumps(results, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
