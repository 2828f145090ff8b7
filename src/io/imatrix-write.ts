/**
 * Writes importance matrices the way llama-imatrix v0.4.0 saves them (tools/imatrix/imatrix.cpp),
 * so that llama-quantize and `to-gguf --imatrix` (src/io/imatrix.ts) read them:
 *
 *  - GGUF (save_imatrix): KVs general.type = "imatrix", imatrix.datasets (string array),
 *    imatrix.chunk_count and imatrix.chunk_size (u32); per entry, in byte order of the names,
 *    `<name>.in_sum2` F32 ne [cols, nMat] and `<name>.counts` F32 ne [1, nMat] (trailing 1-dims
 *    dropped, as ggml_n_dims does); alignment 32.
 *  - legacy .dat (save_imatrix_legacy): i32 n_entries; per entry (sorted; entries whose counts are
 *    all zero are skipped) i32 name length, name, i32 ncall = ceil(max count / chunk_size), i32 nval,
 *    f32 values[i] = (sum / count) * ncall in float32 (sum 1, count 1 for a matrix without tokens);
 *    then i32 chunk count, i32 dataset length, dataset.
 *
 * Files are written under a temporary name and renamed when complete.
 */
import { DeepcastError } from "../errors.js";
import { kv } from "./gguf-kv.js";
import { GGUF_DEFAULT_ALIGNMENT, encodeFileHeader, planGgufLayout, type GgufTensorSpec } from "./gguf-layout.js";
import { dirname } from "node:path";
import { mkdirOutput, writeFileAtomic } from "./write.js";

export interface ImatrixEntryData {
  /** Raw Σ x², nMat matrices of `sums.length / counts.length` columns. */
  sums: ArrayLike<number>;
  /** Tokens per matrix (length nMat, or 1 for a dense weight). */
  counts: ArrayLike<number>;
}

export interface ImatrixData {
  entries: ReadonlyMap<string, ImatrixEntryData>;
  /** Text files the statistics came from (GGUF imatrix.datasets; the last one is the .dat trailer's). */
  datasets: readonly string[];
  chunkCount: number;
  chunkSize: number;
}

export type ImatrixFormat = "gguf" | "dat";

const byName = (a: string, b: string) => (Buffer.compare(Buffer.from(a), Buffer.from(b)));

function check(name: string, e: ImatrixEntryData): { cols: number; nMat: number } {
  const nMat = e.counts.length;
  if (nMat < 1 || e.sums.length < 1 || e.sums.length % nMat !== 0) {
    throw new DeepcastError(`imatrix entry ${name}: ${e.sums.length} sums for ${nMat} counts`, { tensor: name });
  }
  return { cols: e.sums.length / nMat, nMat };
}

/** The bytes of a GGUF imatrix. */
export function encodeImatrixGguf(d: ImatrixData): Buffer {
  const names = [...d.entries.keys()].sort(byName);
  const specs: GgufTensorSpec[] = [];
  const blobs: Float32Array[] = [];
  for (const name of names) {
    const e = d.entries.get(name)!;
    const { cols, nMat } = check(name, e);
    specs.push({ name: `${name}.in_sum2`, ne: nMat > 1 ? [cols, nMat] : [cols], type: "F32" });
    specs.push({ name: `${name}.counts`, ne: nMat > 1 ? [1, nMat] : [1], type: "F32" });
    blobs.push(Float32Array.from(e.sums), Float32Array.from(e.counts));
  }
  const kvs = [
    kv.str("general.type", "imatrix"),
    kv.arr("imatrix.datasets", "STRING", [...d.datasets]),
    kv.u32("imatrix.chunk_count", d.chunkCount),
    kv.u32("imatrix.chunk_size", d.chunkSize),
  ];
  const layout = planGgufLayout("imatrix.gguf", kvs, specs);
  const file = layout.files[0]!;
  const out = Buffer.alloc(file.fileSize);
  encodeFileHeader(file).copy(out, 0);
  file.tensors.forEach((t, i) => {
    const b = blobs[i]!;
    Buffer.from(b.buffer, b.byteOffset, b.byteLength).copy(out, t.fileOffset);
  });
  if (layout.alignment !== GGUF_DEFAULT_ALIGNMENT) throw new DeepcastError("internal: imatrix alignment");
  return out;
}

/** The bytes of a legacy .dat imatrix. */
export function encodeImatrixDat(d: ImatrixData): Buffer {
  const f = Math.fround;
  const parts: Buffer[] = [];
  const i32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    parts.push(b);
  };
  const names = [...d.entries.keys()].filter((n) => Array.from(d.entries.get(n)!.counts).some((c) => c !== 0)).sort(byName);
  const cs = d.chunkSize;
  if (!Number.isInteger(cs) || cs < 1) throw new DeepcastError(`imatrix chunk size must be a positive integer, got ${cs}`);
  i32(names.length);
  for (const name of names) {
    const e = d.entries.get(name)!;
    const { cols } = check(name, e);
    const nameBytes = Buffer.from(name, "utf8");
    i32(nameBytes.length);
    parts.push(nameBytes);
    const max = Math.max(...Array.from(e.counts));
    const ncall = Math.floor((max + cs - 1) / cs);
    i32(ncall);
    i32(e.sums.length);
    const vals = new Float32Array(e.sums.length);
    for (let i = 0; i < vals.length; i++) {
      let count = f(e.counts[Math.floor(i / cols)]!);
      let value = f(e.sums[i]!);
      if (count === 0) {
        value = 1;
        count = 1;
      }
      vals[i] = f(f(value / count) * f(ncall));
    }
    parts.push(Buffer.from(vals.buffer));
  }
  i32(d.chunkCount);
  const dataset = Buffer.from(d.datasets.at(-1) ?? "", "utf8");
  i32(dataset.length);
  parts.push(dataset);
  return Buffer.concat(parts);
}

/** Encodes `d` in `format` and writes it atomically to `path`; returns the bytes written. */
export async function writeImatrix(path: string, d: ImatrixData, format: ImatrixFormat): Promise<number> {
  const bytes = format === "gguf" ? encodeImatrixGguf(d) : encodeImatrixDat(d);
  // The folder is made as for every other output; write errors come back as WRITE_FAILED naming the file.
  await mkdirOutput(dirname(path));
  await writeFileAtomic(path, bytes);
  return bytes.length;
}
