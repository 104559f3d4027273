"""An image's explanation does not depend on the batch it is explained in: each image of a batch of
N gets, bit for bit, the targets, map and heatmap it gets alone.

The reference is the image explained alone (a batch of one). A local `onnxcam explain` and Ray's
actors batch the same files differently (--batch-size, Ray's blocks, a corrupt file in between),
and the Ray tests' parity (tests/test_scale_ray.py, to 1e-7) rests on this. It failed before the
in-graph channel sums became one MatMul per image (graph/channel_sum.py): onnxruntime's channel
ReduceSum takes another kernel for a batch of one, 1.07e-6 apart on MobileNetV2's heatmap.
Covered: every method with in-graph maths (the Grad-CAM family, CAM, Eigen-CAM, EigenGrad-CAM,
FullGrad, FEM, KPCA-CAM; Ablation-CAM's closed form on MobileNetV2) on the bundled MobileNetV2 and on golden models of three exporters (NCHW and NHWC), the
seeded methods (random, SmoothGrad-CAM++: one draw for every image), and the exported model's
in-graph heatmap (`onnxcam export --heatmap`).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from onnxcam import Explainer
from onnxcam.export import export_model
from onnxcam.graph.heatmap import GRAPH_MAPS
from onnxcam.image import load_image, preprocess

from .helpers import EXAMPLES, GOLDENS, MOBILENET, load_golden

IN_GRAPH = sorted({*GRAPH_MAPS, "eigencam", "eigengradcam", "fullgrad", "fem", "kpcacam"})
GOLDEN_MODELS = ["torchscript_tinyresnet", "tf2onnx_smallresnet", "dynamo_tinymbv3"]
NO_CAM_HEAD = {"dynamo_tinymbv3"}  # HardSwish after the classifier: CAM refuses it (HeadError)
CASES = [(name, method) for name in ["mobilenet_v2", *GOLDEN_MODELS] for method in IN_GRAPH
         if not (method == "cam" and name in NO_CAM_HEAD)]
CASES.append(("mobilenet_v2", "ablationcam"))  # closed form from the run's mean(A); blank maps on the goldens' inputs


def variants(x: np.ndarray, axis: int) -> np.ndarray:
    """Five different images from two: themselves, mirrored along `axis` (W), and their mean."""
    return np.concatenate([x, np.flip(x, axis), (x[:1] + x[1:2]) / 2]).astype(np.float32)


@pytest.fixture(scope="module")
def batches() -> dict[str, np.ndarray]:
    photos = [load_image(EXAMPLES / f) for f in ("chelsea.png", "coffee.png", "astronaut.png")]
    photos += [load_image(p) for p in sorted((EXAMPLES / "composites").glob("comp_*.jpg"))[:1]]
    out = {"mobilenet_v2": preprocess(photos, (224, 224))}
    for stem in GOLDEN_MODELS:
        x = load_golden(stem)["x"]
        out[stem] = variants(x, 2 if x.shape[-1] == 3 else 3)
    return out


def model_path(name: str):
    return MOBILENET if name == "mobilenet_v2" else GOLDENS / f"{name}.onnx"


@pytest.mark.parametrize(("name", "method"), CASES)
def test_each_image_explained_in_a_batch_is_explained_as_alone(batches, name: str, method: str) -> None:
    x = batches[name]
    ex = Explainer(model_path(name), method=method)
    together = ex.explain(x)
    assert len(set(together.targets.tolist())) > 1 or name != "mobilenet_v2"  # different images, different classes
    for i in range(len(x)):
        alone = ex.explain(x[i : i + 1])
        assert alone.targets[0] == together.targets[i]
        np.testing.assert_array_equal(alone.cams[0], together.cams[i], err_msg=f"{name} {method} image {i}: map")
        np.testing.assert_array_equal(alone.heatmaps[0], together.heatmaps[i], err_msg=f"{name} {method} image {i}")
        assert together.heatmaps[i].max() > 0.99  # a real map, not a blank one that would match trivially


@pytest.mark.parametrize("method", ["random", "smoothgradcam++"])
def test_seeded_methods_give_each_image_the_same_draws_in_any_batch(batches, method: str) -> None:
    """The seeded methods draw per image (the same draws for every image), not per batch."""
    x = batches["torchscript_tinyresnet"]
    ex = Explainer(model_path("torchscript_tinyresnet"), method=method)
    together = ex.explain(x)
    for i in range(len(x)):
        np.testing.assert_array_equal(ex.explain(x[i : i + 1]).heatmaps[0], together.heatmaps[i], err_msg=f"image {i}")


@pytest.mark.parametrize("name", ["mobilenet_v2", "torchscript_tinyresnet"])
def test_exported_heatmap_is_the_same_alone_and_in_a_batch(batches, name: str) -> None:
    x = batches[name]
    exported = export_model(model_path(name), method="gradcam", heatmap=True)
    sess = ort.InferenceSession(exported.model.SerializeToString(), providers=["CPUExecutionProvider"])
    image = exported.inputs[0]

    def heat(batch: np.ndarray) -> np.ndarray:
        return sess.run(["onnxcam_heatmap"], {image: batch, "onnxcam_target": np.full(len(batch), -1, np.int64)})[0]

    together = heat(x)
    for i in range(len(x)):
        np.testing.assert_array_equal(heat(x[i : i + 1])[0], together[i], err_msg=f"{name} image {i}")
