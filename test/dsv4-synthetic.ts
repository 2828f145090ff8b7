/**
 * A small DeepSeek-V4 checkpoint with data for to-gguf tests: the real layout and dtypes of
 * fixtures/dsv4-replica.ts (FP8 + E8M0 `.scale`, I8-packed FP4 experts + E8M0 `.scale`, I64 tid2eid,
 * F32 hyper-connection tensors, BF16 the rest, `mtp.0.*`) at tiny sizes, seeded random values, one
 * shard, fixtures/tiny-dsv3's tokenizer. Only conversion is tested on it (no forward pass).
 */
import { copyFile, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { dsv4TensorList, dsv4ConfigJson, type V4Dims } from "../fixtures/dsv4-replica.js";
import { encodeHeader } from "../src/io/safetensors.js";
import { safetensorsOrder } from "../src/io/dtypes.js";
import { fileURLToPath } from "node:url";

const FIXTURE = fileURLToPath(new URL("../fixtures/tiny-dsv3", import.meta.url));

export const TINY_V4: V4Dims = {
  vocab: 2048, dim: 256, headDim: 512, indexHeads: 2, indexDim: 128,
  layers: 5, heads: 2, qLora: 128, oLora: 128, oGroups: 2, experts: 8, moeInter: 128, indexTopk: 16, routeScale: "1.5",
  ratios: [0, 0, 4, 128, 4, 0],
};

/** xorshift32: deterministic bytes. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

export async function writeTinyDsv4(dir: string, opts: { dims?: V4Dims; seed?: number; dirName?: string } = {}): Promise<string> {
  const dims = opts.dims ?? TINY_V4;
  const out = join(dir, opts.dirName ?? "DeepSeek-V4-Tiny");
  await mkdir(out, { recursive: true });
  const tensors = dsv4TensorList({ dims, mtp: true });
  const specs = tensors.map(({ name, dtype, shape }) => ({ name, dtype, shape })).sort(safetensorsOrder);
  const { bytes: header, offsets } = encodeHeader(specs, { format: "pt" });
  const dataLen = offsets.length ? offsets[offsets.length - 1]![1] : 0;
  const data = new Uint8Array(dataLen);
  const next = rng(opts.seed ?? 1234);
  const f32 = new Float32Array(1);
  const f32u = new Uint32Array(f32.buffer);
  specs.forEach((t, i) => {
    const [b, e] = offsets[i]!;
    const view = data.subarray(b, e);
    const n = t.shape.reduce((a, c) => a * c, 1);
    const isNorm = t.name.endsWith("norm.weight");
    switch (t.dtype) {
      case "F8_E4M3":
        for (let k = 0; k < n; k++) {
          let v = next() & 0xff;
          if ((v & 0x7f) === 0x7f) v &= 0xfe; // no NaN codes
          view[k] = v;
        }
        break;
      case "F8_E8M0":
        for (let k = 0; k < n; k++) view[k] = 118 + (next() % 12);
        break;
      case "I8":
        for (let k = 0; k < n; k++) view[k] = next() & 0xff;
        break;
      case "I64": {
        const dv = new DataView(view.buffer, view.byteOffset, view.byteLength);
        for (let k = 0; k < n; k++) dv.setBigInt64(k * 8, BigInt(next() % dims.experts), true);
        break;
      }
      case "F32": {
        const dv = new DataView(view.buffer, view.byteOffset, view.byteLength);
        for (let k = 0; k < n; k++) dv.setFloat32(k * 4, ((next() / 2 ** 32) - 0.5) * 0.5, true);
        break;
      }
      case "BF16": {
        const dv = new DataView(view.buffer, view.byteOffset, view.byteLength);
        for (let k = 0; k < n; k++) {
          f32[0] = isNorm ? 1 + ((next() / 2 ** 32) - 0.5) * 0.2 : ((next() / 2 ** 32) - 0.5) * 0.2;
          dv.setUint16(k * 2, f32u[0]! >>> 16, true);
        }
        break;
      }
      default:
        throw new Error(`tiny V4: no generator for ${t.dtype}`);
    }
  });
  const file = "model-00001-of-00001.safetensors";
  const buf = new Uint8Array(header.length + data.length);
  buf.set(header, 0);
  buf.set(data, header.length);
  await writeFile(join(out, file), buf);
  const weight_map: Record<string, string> = {};
  for (const t of [...specs].sort((a, b) => (a.name < b.name ? -1 : 1))) weight_map[t.name] = file;
  await writeFile(join(out, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: dataLen }, weight_map }, null, 2) + "\n");
  await writeFile(join(out, "config.json"), dsv4ConfigJson({ dims, mtp: true }));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) await copyFile(join(FIXTURE, f), join(out, f));
  return out;
}
