// The demo page: an exported --heatmap --rgb-input model in onnxruntime-web (WASM), offline.
// Query parameters: model= (default model.onnx, next to this page), labels= (one class name a
// line; default the bundled MobileNetV2's). The result is also left in window.onnxcamResult.
import * as ort from "../node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

ort.env.wasm.wasmPaths = new URL("../node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need cross-origin isolation; one is enough for one image

const params = new URLSearchParams(location.search);
const modelUrl = params.get("model") || "model.onnx";
const labelsUrl = params.get("labels") || "../../models/mobilenet_v2/imagenet_classes.txt";
const $ = (id) => document.getElementById(id);

function setState(state, message, isError = false) {
  document.body.dataset.state = state;
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

/** The JET colour of v in [0, 1] (blue → cyan → yellow → red), as RGB bytes. */
function jet(v) {
  const c = (x) => Math.round(255 * Math.min(1, Math.max(0, x)));
  return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
}

/** Photo pixels as the model's uint8 input (1, h, w, 3), alpha dropped. */
function rgbTensor(image) {
  const n = image.width * image.height;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    rgb[3 * i] = image.data[4 * i];
    rgb[3 * i + 1] = image.data[4 * i + 1];
    rgb[3 * i + 2] = image.data[4 * i + 2];
  }
  return new ort.Tensor("uint8", rgb, [1, image.height, image.width, 3]);
}

/** Blend the heatmap (H, W) in [0, 1] over the photo drawn on `ctx` (half and half). */
function drawOverlay(ctx, heat, H, W) {
  const small = new ImageData(W, H);
  for (let i = 0; i < H * W; i++) {
    const [r, g, b] = jet(heat[i]);
    small.data.set([r, g, b, 255], 4 * i);
  }
  const off = document.createElement("canvas");
  off.width = W;
  off.height = H;
  off.getContext("2d").putImageData(small, 0, 0);
  ctx.globalAlpha = 0.5;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(off, 0, 0, ctx.canvas.width, ctx.canvas.height);
  ctx.globalAlpha = 1;
}

async function main() {
  let labels = [];
  try {
    const r = await fetch(labelsUrl);
    if (r.ok) labels = (await r.text()).split("\n").map((s) => s.trim()).filter(Boolean);
  } catch { /* labels are optional */ }
  const bytes = await (await fetch(modelUrl)).arrayBuffer();
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  if (!session.inputNames.includes("onnxcam_rgb") || !session.outputNames.includes("onnxcam_heatmap")) {
    throw new Error(`${modelUrl} is not an onnxcam export with --heatmap --rgb-input (inputs: ${session.inputNames})`);
  }
  setState("ready", `model ${modelUrl} loaded (inputs ${session.inputNames.join(", ")}); choose an image`);
  $("file").addEventListener("change", async () => {
    const file = $("file").files[0];
    if (!file) return;
    try {
      setState("running", `explaining ${file.name}…`);
      const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
      const canvas = $("view");
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(bitmap, 0, 0);
      const feeds = { onnxcam_rgb: rgbTensor(ctx.getImageData(0, 0, bitmap.width, bitmap.height)) };
      const target = Number.parseInt($("target").value || "-1", 10);
      if (session.inputNames.includes("onnxcam_target")) {
        feeds.onnxcam_target = new ort.Tensor("int64", BigInt64Array.from([BigInt(target)]), [1]);
      } else if (target !== -1) {
        throw new Error("this model always explains the predicted class (exported without a target input)");
      }
      const t0 = performance.now();
      const out = await session.run(feeds);
      const ms = performance.now() - t0;
      const scoresName = session.outputNames[0];
      const scores = out[scoresName].data;
      let top = 0;
      for (let k = 1; k < scores.length; k++) if (scores[k] > scores[top]) top = k;
      const explained = Number(out.onnxcam_targets.data[0]);
      const [, H, W] = out.onnxcam_heatmap.dims;
      const heat = out.onnxcam_heatmap.data;
      drawOverlay(ctx, heat, H, W);
      const name = (k) => labels[k] ?? `class ${k}`;
      $("result").textContent = `predicted ${name(top)} (${top}); heatmap of ${name(explained)} (${explained}); ${ms.toFixed(0)} ms`;
      window.onnxcamResult = { predicted: top, explained, label: name(explained), dims: [H, W], heatmap: Array.from(heat), ms };
      setState("done", `explained ${file.name}`);
    } catch (err) {
      window.onnxcamResult = { error: String(err.message || err) };
      setState("error", String(err.message || err), true);
    }
  });
}

main().catch((err) => {
  window.onnxcamResult = { error: String(err.message || err) };
  setState("error", `cannot start: ${err.message || err}`, true);
});
