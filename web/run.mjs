#!/usr/bin/env node
// Run an ONNX model (an `onnxcam export` file) in onnxruntime-node on .npy inputs.
//
//   node web/run.mjs MODEL.onnx OUT_DIR NAME=FILE.npy [NAME=FILE.npy ...]
//
// Writes OUT_DIR/<output>.npy for every output and OUT_DIR/run.json ({inputNames, outputNames,
// outputs: {name: {type, dims}}}). A feed the model does not declare is an error (exit 1), as is a
// missing one: a target is never silently dropped.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { parseNpy, toNpy } from "./npy.mjs";

async function main(argv) {
  if (argv.length < 3) {
    console.error("usage: node web/run.mjs MODEL.onnx OUT_DIR NAME=FILE.npy [...]");
    return 2;
  }
  const [modelPath, outDir, ...pairs] = argv;
  const session = await ort.InferenceSession.create(modelPath, { executionProviders: ["cpu"], logSeverityLevel: 2 });
  const feeds = {};
  for (const p of pairs) {
    const eq = p.indexOf("=");
    if (eq < 1) throw new Error(`expected NAME=FILE.npy, got ${p}`);
    const name = p.slice(0, eq);
    if (!session.inputNames.includes(name)) {
      throw new Error(`the model has no input ${name} (inputs: ${session.inputNames.join(", ")})`);
    }
    const t = parseNpy(readFileSync(p.slice(eq + 1)));
    feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
  }
  const missing = session.inputNames.filter((n) => !(n in feeds));
  if (missing.length) throw new Error(`missing input(s) ${missing.join(", ")}`);
  const results = await session.run(feeds);
  mkdirSync(outDir, { recursive: true });
  const outputs = {};
  for (const name of session.outputNames) {
    const t = results[name];
    const safe = name.replace(/[^A-Za-z0-9_.-]/g, "_");
    writeFileSync(join(outDir, `${safe}.npy`), toNpy({ type: t.type, dims: t.dims, data: t.data }));
    outputs[name] = { type: t.type, dims: t.dims, file: `${safe}.npy` };
  }
  writeFileSync(join(outDir, "run.json"), JSON.stringify({ inputNames: session.inputNames, outputNames: session.outputNames, outputs }, null, 2));
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`error: ${err.message.split("\n")[0]}`);
    process.exit(1);
  },
);
