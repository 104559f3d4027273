"""Reference CAM maps from the reference libraries (pytorch-grad-cam, torchcam) on the tiny golden models.

Rebuilds the five tiny torch models of ``tools/goldens/make_torch_goldens.py`` (its own builders,
same seeds), checks them against the goldens in ``tests/data/goldens/torchscript_<name>.npz``
(outputs to 1e-5; the default-layer module's hooked output equals the golden ``activation``), then
computes, for the golden input ``x`` and the golden ``targets``, the maps of every pytorch-grad-cam
method (and a few torchcam methods) at that default layer, and writes
``tests/data/methods/<name>.npz`` (float32 maps, see ``tests/data/methods/README.md``).

The onnxcam test suite only reads the ``.npz`` files (numpy); it never imports torch.

How to run (from the repository root; torch lives in its own venv)::

    python3 -m venv /work/venvs/tv
    /work/venvs/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx onnxscript onnxruntime numpy
    /work/venvs/tv/bin/pip install grad-cam==1.5.7 torchcam==0.5.0
    /work/venvs/tv/bin/python -m tools.methods.make_reference_maps

Options: ``--out DIR`` (default tests/data/methods), ``--only NAME`` (repeatable), ``--no-readme``.
Deterministic: CPU, float32, one thread, seeds fixed before every randomised call (torchcam's
SSCAM and SmoothGradCAMpp draw noise from torch's global RNG). Fails loudly (non-zero exit) when a
rebuilt model or its hooked activation disagrees with the goldens, when a captured raw map does not
reproduce the library's returned map, or when a written .npz exceeds 1 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tools import common
from tools.common import REBUILD_ATOL as ATOL
from tools.goldens import make_torch_goldens as G  # (the golden builders: build(), MODELS)

import pytorch_grad_cam as pgc  # noqa: E402
from pytorch_grad_cam import (  # noqa: E402
    AblationCAM, EigenCAM, EigenGradCAM, FullGrad, GradCAM, GradCAMElementWise, GradCAMPlusPlus,
    GuidedBackpropReLUModel, HiResCAM, LayerCAM, ScoreCAM, XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayer  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

try:
    import torchcam
    from torchcam.methods import ISCAM, SSCAM, GradCAMpp as TcGradCAMpp, ScoreCAM as TcScoreCAM, SmoothGradCAMpp
    HAVE_TORCHCAM = True
except Exception as exc:  # pragma: no cover - optional
    print(f"torchcam unavailable ({exc}); skipping its methods", file=sys.stderr)
    HAVE_TORCHCAM = False

GOLDENS = common.GOLDENS_DIR
MAX_BYTES = 1_000_000
SEED = 0

SCORECAM_BATCH = 16
ABLATION_BATCH = 32
ABLATION_RATIO = 1.0
SSCAM_KW = dict(batch_size=16, num_samples=35, std=2.0)   # torchcam defaults (batch size only affects speed)
ISCAM_KW = dict(batch_size=16, num_samples=10)
SGCPP_KW = dict(num_samples=4, std=0.3)
TC_SCORECAM_KW = dict(batch_size=16)


class ZeroAblationLayer(AblationLayer):
    """pytorch-grad-cam's AblationLayer, but always ablating to 0 (the paper's / the GUIDE's
    definition). The stock layer ablates to min(batch) - 1e7 when the activation's minimum is not
    exactly 0 (e.g. Hardswish outputs)."""

    def __call__(self, x):
        output = self.activations
        for i in range(output.size(0)):
            output[i, self.indices[i], :] = 0
        return output


def pgc_postprocess(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What BaseCAM does to a single layer's ReLU'd map: scale_cam_image (per-image min-max,
    cv2.resize bilinear to (W, H)) in compute_cam_per_layer, then again in aggregate_multi_layers
    (mean over layers = identity for one layer, min-max once more)."""
    return scale_cam_image(np.maximum(scale_cam_image(raw, size), 0))


def f32(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def capture(cam) -> dict[str, list[np.ndarray]]:
    """Wrap the instance's get_cam_image / get_cam_weights to record their (pre-ReLU, layer-
    resolution) results; BaseCAM then applies np.maximum(., 0) and scale_cam_image."""
    rec: dict[str, list[np.ndarray]] = {"signed": [], "weights": []}
    orig_img, orig_w = cam.get_cam_image, cam.get_cam_weights

    def get_cam_image(*a, **k):
        r = orig_img(*a, **k)
        rec["signed"].append(f32(r).copy())
        return r

    def get_cam_weights(*a, **k):
        r = orig_w(*a, **k)
        rec["weights"].append(f32(r).copy())
        return r

    cam.get_cam_image = get_cam_image
    cam.get_cam_weights = get_cam_weights
    return rec


@contextlib.contextmanager
def quiet():
    """pytorch-grad-cam's ScoreCAM / AblationCAM print tqdm bars; silence them."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


def check_model(name: str, model: nn.Module, g: dict) -> None:
    x = torch.from_numpy(g["x"])
    seen: list[torch.Tensor] = []
    h = model.get_submodule(model.cam_module).register_forward_hook(lambda _m, _i, o: seen.append(o.detach()))
    with torch.no_grad():
        y = model(x).numpy()
    h.remove()
    err = float(np.abs(y - g["outputs"]).max())
    if not err <= ATOL:
        raise SystemExit(f"{name}: rebuilt model outputs differ from the golden by {err:.3g} > {ATOL}")
    aerr = float(np.abs(seen[0].numpy() - g["activation"]).max())
    if not aerr <= ATOL:
        raise SystemExit(f"{name}: hooked {model.cam_module} output differs from the golden activation by {aerr:.3g}")
    if not np.array_equal(y.argmax(1), g["targets"]):
        raise SystemExit(f"{name}: argmax != golden targets")
    print(f"{name}: outputs max|diff| {err:.2e}, activation max|diff| {aerr:.2e}", file=sys.stderr)


def run_pgc(name: str, model: nn.Module, g: dict, out: dict, info: dict) -> None:
    x = torch.from_numpy(g["x"])
    tgt = [int(t) for t in g["targets"]]
    targets = [ClassifierOutputTarget(t) for t in tgt]
    layer = model.get_submodule(model.cam_module)
    size = (x.shape[-1], x.shape[-2])  # (W, H) for cv2.resize

    def gradient_check(cam) -> None:
        grads = cam.activations_and_grads.gradients
        acts = cam.activations_and_grads.activations
        if grads:
            e = float(np.abs(grads[0].numpy() - g["gradient"]).max())
            if not e <= 1e-4:
                raise SystemExit(f"{name}: pytorch-grad-cam hooked gradient differs from golden by {e:.3g}")
        e = float(np.abs(acts[0].numpy() - g["activation"]).max())
        if not e <= ATOL:
            raise SystemExit(f"{name}: pytorch-grad-cam hooked activation differs from golden by {e:.3g}")

    methods: dict[str, tuple] = {
        "GradCAM": (GradCAM, {}),
        "HiResCAM": (HiResCAM, {}),
        "GradCAMPlusPlus": (GradCAMPlusPlus, {}),
        "XGradCAM": (XGradCAM, {}),
        "LayerCAM": (LayerCAM, {}),
        "GradCAMElementWise": (GradCAMElementWise, {}),
        "EigenGradCAM": (EigenGradCAM, {}),
        "EigenCAM": (EigenCAM, {}),
        "ScoreCAM": (ScoreCAM, {}),
        "AblationCAM": (AblationCAM, dict(batch_size=ABLATION_BATCH, ratio_channels_to_ablate=ABLATION_RATIO)),
        "AblationCAM_zero": (AblationCAM, dict(batch_size=ABLATION_BATCH, ratio_channels_to_ablate=ABLATION_RATIO,
                                               ablation_layer=ZeroAblationLayer())),
    }
    if hasattr(pgc, "KPCA_CAM"):
        methods["KPCA_CAM"] = (pgc.KPCA_CAM, {})  # kernel='sigmoid', gamma=None (defaults)
    if hasattr(pgc, "FEM"):
        methods["FEM"] = (pgc.FEM, {})  # k=2 (default)

    for key, (cls, kw) in methods.items():
        t0 = time.perf_counter()
        try:
            cam = cls(model=model, target_layers=[layer], **kw)
            if cls is ScoreCAM:
                cam.batch_size = SCORECAM_BATCH
            rec = capture(cam)
            np.random.seed(SEED)  # KPCA_CAM: sklearn KernelPCA's arpack solver draws v0 from numpy's global RNG
            torch.manual_seed(SEED)
            with quiet():
                m = cam(input_tensor=x, targets=targets, aug_smooth=False, eigen_smooth=False)
            gradient_check(cam)
            cam.activations_and_grads.release()
        except Exception as exc:  # record and continue
            info["failed"][key] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: {key} FAILED: {exc!r}", file=sys.stderr)
            continue
        signed = rec["signed"][-1]
        raw = np.maximum(signed, 0)
        again = pgc_postprocess(raw, size)
        if not np.allclose(again, m, atol=1e-6):
            raise SystemExit(f"{name}: {key}: captured raw map does not reproduce the library's output")
        out[key] = f32(m)
        out[f"{key}_raw"] = f32(raw)
        out[f"{key}_signed"] = f32(signed)
        if rec["weights"]:
            out[f"{key}_weights"] = f32(rec["weights"][-1])
        info["seconds"][key] = round(time.perf_counter() - t0, 3)

    # Options on GradCAM: eigen_smooth (projection of the weighted activations) and aug_smooth (TTA).
    for key, kw in (("GradCAM_eigen_smooth", dict(eigen_smooth=True)), ("GradCAM_aug_smooth", dict(aug_smooth=True))):
        t0 = time.perf_counter()
        cam = GradCAM(model=model, target_layers=[layer])
        rec = capture(cam)
        m = cam(input_tensor=x, targets=targets, **{"aug_smooth": False, "eigen_smooth": False, **kw})
        cam.activations_and_grads.release()
        out[key] = f32(m)
        if key == "GradCAM_eigen_smooth":
            out[f"{key}_raw"] = f32(np.maximum(rec["signed"][-1], 0))
            out[f"{key}_signed"] = f32(rec["signed"][-1])
        else:
            info["aug_smooth_transforms"] = (
                f"BaseCAM default tta_transforms = ttach.Compose([HorizontalFlip(), Multiply(factors=[0.9, 1, 1.1])]): "
                f"{len(list(cam.tta_transforms))} transforms; maps de-augmented and averaged (no re-normalisation)")
        info["seconds"][key] = round(time.perf_counter() - t0, 3)

    # FullGrad: target_layers ignored; every Conv2d/BatchNorm2d with a bias is used.
    t0 = time.perf_counter()
    with quiet():
        fg = FullGrad(model=model, target_layers=[])
    names = {id(m): n for n, m in model.named_modules()}
    info["fullgrad_layers"] = [names[id(m)] for m in fg.target_layers]
    # Independent record of the gradient at each bias layer (keyed by module), to check that
    # FullGrad pairs every layer's bias with that layer's gradient.
    own: dict[str, np.ndarray] = {}
    hooks = []
    for lyr in fg.target_layers:
        def fwd(mod, _i, o, _n=names[id(lyr)]):
            o.register_hook(lambda gr, _n=_n: own.__setitem__(_n, gr.detach().numpy().copy()))
        hooks.append(lyr.register_forward_hook(fwd))
    agg: list[np.ndarray] = []
    orig_agg = fg.aggregate_multi_layers

    def aggregate(c):
        agg.append(np.sum(c, axis=1).astype(np.float32))
        return orig_agg(c)

    fg.aggregate_multi_layers = aggregate
    m = fg(input_tensor=x.clone(), targets=targets)
    for h in hooks:
        h.remove()
    lib_grads = [gr.numpy() for gr in fg.activations_and_grads.gradients]
    pairing = []
    for lname, lg in zip(info["fullgrad_layers"], lib_grads):
        mine = own[lname]
        pairing.append(bool(mine.shape == lg.shape and np.allclose(mine, lg, atol=1e-6)))
    info["fullgrad_bias_grad_pairing_ok"] = pairing
    if not all(pairing):
        info["quirks"].append(
            "FullGrad pairs biases (module registration order) with gradients (autograd hook order); "
            f"they disagree on layers {[n for n, ok in zip(info['fullgrad_layers'], pairing) if not ok]}")
    out["FullGrad"] = f32(m)
    out["FullGrad_raw"] = f32(agg[-1])  # sum over the input-gradient term and all bias terms, input size, before the final min-max
    if not all(pairing):
        # Same library code with the pairing repaired: bias_data reordered to the gradient order.
        order = []
        for lg in lib_grads:
            hits = [i for i, ln in enumerate(info["fullgrad_layers"])
                    if own[ln].shape == lg.shape and np.allclose(own[ln], lg, atol=1e-6)]
            hits = [i for i in hits if i not in order]  # equal gradients (both inputs of an Add) are interchangeable
            if not hits:
                raise SystemExit(f"{name}: cannot match FullGrad gradients to layers")
            order.append(hits[0])
        info["fullgrad_gradient_order"] = [info["fullgrad_layers"][i] for i in order]
        fg.bias_data = [fg.get_bias_data(fg.target_layers[i]).cpu().numpy() for i in order]
        m = fg(input_tensor=x.clone(), targets=targets)
        out["FullGrad_fixed"] = f32(m)
        out["FullGrad_fixed_raw"] = f32(agg[-1])
    fg.activations_and_grads.release()
    info["seconds"]["FullGrad"] = round(time.perf_counter() - t0, 3)

    # Guided backprop (per image, target class), on a copy: GuidedBackpropReLUModel swaps every
    # nn.ReLU of the model for its own module and back (new nn.ReLU instances).
    t0 = time.perf_counter()
    gbm = GuidedBackpropReLUModel(model=copy.deepcopy(model), device="cpu")
    gb = np.stack([gbm(x[i:i + 1].clone(), target_category=tgt[i]) for i in range(x.shape[0])])  # (N, H, W, 3)
    gb = gb.transpose(0, 3, 1, 2)  # NCHW like x
    out["GuidedBackprop"] = f32(gb)
    # pytorch-grad-cam's example: cam_mask = cv2.merge([grayscale_cam] * 3); deprocess_image(cam_mask * gb)
    out["GuidedGradCAM"] = f32(gb * out["GradCAM"][:, None])  # raw product, deprocess_image NOT applied
    info["guided_relu_modules"] = [n for n, mod in model.named_modules() if type(mod) is nn.ReLU]
    info["seconds"]["GuidedBackprop"] = round(time.perf_counter() - t0, 3)


def run_torchcam(name: str, model: nn.Module, g: dict, out: dict, info: dict) -> None:
    x = torch.from_numpy(g["x"])
    tgt = [int(t) for t in g["targets"]]
    size = (x.shape[-1], x.shape[-2])
    specs = {
        "tc_ScoreCAM": (TcScoreCAM, TC_SCORECAM_KW, False),
        "tc_SSCAM": (SSCAM, SSCAM_KW, False),
        "tc_ISCAM": (ISCAM, ISCAM_KW, False),
        "tc_SmoothGradCAMpp": (SmoothGradCAMpp, SGCPP_KW, True),
        "tc_GradCAMpp": (TcGradCAMpp, {}, True),  # only to document its alpha bug; NOT a reference
    }
    for key, (cls, kw, grad) in specs.items():
        t0 = time.perf_counter()
        try:
            ext = cls(model, target_layer=model.cam_module, input_shape=tuple(x.shape[1:]), **kw)
            wts: list[np.ndarray] = []
            orig = ext._get_weights

            def _get_weights(*a, _orig=orig, **k):
                r = _orig(*a, **k)
                wts.append(f32(r[0]))
                return r

            ext._get_weights = _get_weights
            torch.manual_seed(SEED)
            if grad:
                scores = model(x)
            else:
                with torch.no_grad():
                    scores = model(x)
            raw = ext(class_idx=tgt, scores=scores, normalized=False)[0]
            ext.remove_hooks()
        except Exception as exc:
            info["failed"][key] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: {key} FAILED: {exc!r}", file=sys.stderr)
            continue
        raw = f32(raw)  # ReLU'd (torchcam applies ReLU for these classes), layer resolution, unnormalised
        out[f"{key}_raw"] = raw
        out[key] = pgc_postprocess(raw, size)  # pytorch-grad-cam's post-processing, for comparability
        out[f"{key}_weights"] = wts[-1]
        if key == "tc_SmoothGradCAMpp":
            # torchcam combines its weights with the activation hooked during the LAST noisy forward
            # (hook_a is overwritten); also keep the weights applied to the clean activation.
            clean = np.maximum((wts[-1][:, :, None, None] * g["activation"]).sum(1), 0).astype(np.float32)
            info["tc_SmoothGradCAMpp_raw_vs_clean_maxdiff"] = float(np.abs(clean - raw).max())
            out[f"{key}_cleanact_raw"] = clean
            out[f"{key}_cleanact"] = pgc_postprocess(clean, size)
        info["seconds"][key] = round(time.perf_counter() - t0, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=common.ROOT / "tests" / "data" / "methods")
    ap.add_argument("--only", action="append", choices=list(G.MODELS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    warnings.filterwarnings("ignore")

    report_path = args.out / "report.json"
    report: dict = json.loads(report_path.read_text()) if args.only and report_path.exists() else {}
    t_all = time.perf_counter()
    for name in args.only or list(G.MODELS):
        t0 = time.perf_counter()
        g = dict(np.load(GOLDENS / f"torchscript_{name}.npz"))
        model = G.build(name)
        check_model(name, model, g)
        out: dict[str, np.ndarray] = {}
        info: dict = {"failed": {}, "seconds": {}, "quirks": []}
        run_pgc(name, model, g, out, info)
        if HAVE_TORCHCAM:
            run_torchcam(name, model, g, out, info)
        check_model(name, model, g)  # the methods left the model unchanged
        out["x"] = g["x"]
        out["targets"] = g["targets"]
        out["layer_desc"] = np.array(f"{model.cam_module}: {model.cam_desc}")
        path = args.out / f"{name}.npz"
        np.savez_compressed(path, **out)
        nbytes = path.stat().st_size
        if nbytes > MAX_BYTES:
            raise SystemExit(f"{path} is {nbytes} bytes > {MAX_BYTES}")
        info["bytes"] = nbytes
        info["total_seconds"] = round(time.perf_counter() - t0, 2)
        info["keys"] = {k: [str(v.dtype), list(v.shape)] for k, v in out.items()}
        report[name] = info
        print(f"{name}: {len(out)} arrays, {nbytes} B, {info['total_seconds']} s, failed: {info['failed']}", file=sys.stderr)
    report["_provenance"] = {
        "torch": torch.__version__, "grad-cam": _version("grad-cam"), "torchcam": _version("torchcam"),
        "numpy": np.__version__, "opencv": __import__("cv2").__version__,
        "seconds_all": round(time.perf_counter() - t_all, 2),
    }
    report_path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


if __name__ == "__main__":
    main()
