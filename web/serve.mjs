#!/usr/bin/env node
// A static file server for the demo, offline: serves ROOT (default: the repository) on 127.0.0.1.
//
//   node web/serve.mjs [--root DIR] [--port N]      (port 0: any free port)
//
// Prints one line, "serving ROOT at http://127.0.0.1:PORT/", then serves until killed. The page
// is at /web/demo/; onnxruntime-web's .mjs and .wasm files come from web/node_modules.
import { createReadStream, statSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const TYPES = {
  ".html": "text/html; charset=utf-8", ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
  ".json": "application/json", ".onnx": "application/octet-stream", ".txt": "text/plain; charset=utf-8",
  ".png": "image/png", ".jpg": "image/jpeg", ".css": "text/css", ".map": "application/json",
};

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const root = resolve(arg("--root", join(dirname(fileURLToPath(import.meta.url)), "..")));
const port = Number(arg("--port", "8000"));

const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  let file = normalize(join(root, path));
  if (file !== root && !file.startsWith(root + sep)) {
    res.writeHead(403).end("forbidden");
    return;
  }
  try {
    if (statSync(file).isDirectory()) file = join(file, "index.html");
    const size = statSync(file).size;
    res.writeHead(200, { "Content-Type": TYPES[extname(file)] || "application/octet-stream", "Content-Length": size });
    createReadStream(file).pipe(res);
  } catch {
    res.writeHead(404).end("not found");
  }
});
server.listen(port, "127.0.0.1", () => {
  console.log(`serving ${root} at http://127.0.0.1:${server.address().port}/`);
});
