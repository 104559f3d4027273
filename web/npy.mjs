// NumPy .npy files (format 1.0/2.0/3.0, C order, little endian) <-> onnxruntime tensors.
// Used by run.mjs and the tests' fixtures; only the dtypes an exported model reads or writes.

const DESCR_TO_TYPE = { "<f4": "float32", "<f8": "float64", "<i8": "int64", "<i4": "int32", "|u1": "uint8", "|b1": "bool" };
const TYPE_TO_DESCR = Object.fromEntries(Object.entries(DESCR_TO_TYPE).map(([d, t]) => [t, d]));
const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array, uint8: Uint8Array, bool: Uint8Array,
};

/** Parse .npy bytes into {type, dims, data} (data: a typed array of the dtype). */
export function parseNpy(buf) {
  const bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  if (bytes[0] !== 0x93 || String.fromCharCode(...bytes.slice(1, 6)) !== "NUMPY") throw new Error("not a .npy file");
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder("latin1").decode(bytes.slice(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error("fortran-ordered .npy is not supported");
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const type = DESCR_TO_TYPE[descr];
  if (!type) throw new Error(`unsupported .npy dtype ${descr}`);
  const offset = start + headerLen;
  const raw = bytes.slice(offset); // a copy, aligned
  const Arr = ARRAYS[type];
  const data = new Arr(raw.buffer, 0, raw.byteLength / Arr.BYTES_PER_ELEMENT);
  return { type, dims: shape, data };
}

/** Serialise {type, dims, data} as .npy (format 1.0) bytes. */
export function toNpy({ type, dims, data }) {
  const descr = TYPE_TO_DESCR[type];
  if (!descr) throw new Error(`unsupported tensor type ${type}`);
  const shape = dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(", ")})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header = header + " ".repeat(pad % 64) + "\n";
  const out = new Uint8Array(10 + header.length + data.byteLength);
  out.set([0x93, ..."NUMPY".split("").map((c) => c.charCodeAt(0)), 1, 0]);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 10 + header.length);
  return out;
}
