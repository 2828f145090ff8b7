/**
 * Runs a GGUF-input plan (./gguf-source-plan.ts) through the resumable to-gguf write loop: each
 * tensor streams in slabs of whole rows, copied when its type stays, else converted to float32 and
 * quantized (with its imatrix weights per matrix, as llama-quantize). Input data is checked as
 * llama-quantize's loader checks it (no NaN/Inf; a quantized block with a NaN/Inf scale decodes to one).
 */
import { stat } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { DeepcastError } from "../errors.js";
import { rowBytes, type GgmlType } from "../formats/ggml-types.js";
import type { GgufReader } from "../io/gguf-reader.js";
import type { TensorRange } from "../io/shard-reader.js";
import { LocalSource } from "../io/source.js";
import { checkFreeSpace } from "../io/write.js";
import { dequantizeRows } from "../quant/ggml.js";
import type { GgufSourcePlan, GgufSourceTensor } from "./gguf-source-plan.js";
import { runGgufJob, type GgufRunOptions, type ToGgufSummary } from "./gguf-run.js";
import { DEFAULT_CHUNK_BYTES, type Chunk } from "./pipeline.js";
import { encodeRows } from "./to-gguf.js";

export interface GgufSourceRunOptions extends GgufRunOptions {
  threads: number;
  /** Bytes of input (or of float32 values, whichever is more) per chunk. */
  chunkBytes?: number;
  /** Keep NaN/Inf values of the input instead of failing (llama-quantize fails: "tensor has invalid data"). */
  allowNonFinite?: boolean;
}

/** Reads chunk ranges from the GGUF's tensors (TensorRange.tensor is the GGUF tensor name). */
class GgufRangeReader {
  constructor(private readonly reader: GgufReader) {}

  async read(src: TensorRange, dst: Uint8Array): Promise<void> {
    const t = this.reader.tensor(src.tensor);
    if (!t) throw new DeepcastError("tensor not found in the GGUF", { file: this.reader.path, tensor: src.tensor, code: "NOT_FOUND" });
    await this.reader.read(t, src.offset, dst);
  }

  close(): Promise<void> {
    return this.reader.close();
  }
}

/** Index of the first NaN/Inf in `v`, or -1. */
function firstNonFinite(v: Float32Array): number {
  for (let i = 0; i < v.length; i++) if (v[i]! - v[i]! !== 0) return i;
  return -1;
}

/** Index of the first element whose exponent is all ones (NaN/Inf) in F32/F16/BF16 bytes, or -1. */
function firstNonFiniteBits(type: GgmlType, bytes: Uint8Array): number {
  if (type.name === "F32") {
    const u = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    for (let i = 0; i < u.length; i++) if ((u[i]! & 0x7f800000) === 0x7f800000) return i;
    return -1;
  }
  const mask = type.name === "F16" ? 0x7c00 : 0x7f80;
  const u = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  for (let i = 0; i < u.length; i++) if ((u[i]! & mask) === mask) return i;
  return -1;
}

interface Ctx {
  threads: number;
  chunkBytes: number;
  allowNonFinite: boolean;
  imatrix?: Map<string, Float32Array>;
  scratch: { buf: Float32Array };
  reader: GgufReader;
}

function scratch(ctx: Ctx, n: number): Float32Array {
  if (ctx.scratch.buf.length < n) ctx.scratch.buf = new Float32Array(n);
  return ctx.scratch.buf.subarray(0, n);
}

/** Chunks that produce output tensor `t` from its input tensor, in order. */
function tensorChunks(ctx: Ctx, t: GgufSourceTensor): Chunk[] {
  const src = t.src;
  const ne0 = src.ne[0] ?? 1;
  const totalRows = src.ne.slice(1).reduce((a, b) => a * b, 1);
  const inRow = rowBytes(src.type, ne0);
  const outRow = rowBytes(t.type, ne0);
  const step = Math.max(1, Math.floor(ctx.chunkBytes / Math.max(inRow, outRow, ne0 * 4)));
  const copy = t.type === src.type;
  const rowsPerMat = src.ne[1] ?? 1;
  const weights = ctx.imatrix?.get(t.name);
  const file = ctx.reader.files[src.file]!.path;
  const invalid = (row: number) => new DeepcastError(
    `tensor has invalid data: a NaN or Inf value in row ${row} (llama-quantize refuses it too; --allow-non-finite keeps it)`,
    { file, tensor: t.name, code: "NON_FINITE" });
  /** Float values of rows of the input, checked. */
  const decode = (input: Uint8Array, rows: number, r0: number): Float32Array => {
    const values = scratch(ctx, rows * ne0);
    dequantizeRows(src.type, input, rows, ne0, ctx.threads, values);
    if (!ctx.allowNonFinite) {
      const bad = firstNonFinite(values);
      if (bad >= 0) throw invalid(r0 + Math.floor(bad / ne0));
    }
    return values;
  };
  const chunks: Chunk[] = [];
  for (let r0 = 0; r0 < totalRows; r0 += step) {
    const rows = Math.min(step, totalRows - r0);
    const chunk: Chunk = {
      tensor: t.name,
      src: { file: String(src.file), tensor: t.name, offset: r0 * inRow, length: rows * inRow },
      outBytes: rows * outRow,
    };
    if (!copy) {
      chunk.convert = (input, out) => encodeRows(t.type, decode(input, rows, r0), rows, ne0, out, r0, rowsPerMat, weights, ctx.threads);
    } else if (!ctx.allowNonFinite && (!src.type.quantized || src.type.quantizer)) {
      chunk.convert = (input, out) => {
        if (!src.type.quantized) {
          const bad = firstNonFiniteBits(src.type, input);
          if (bad >= 0) throw invalid(r0 + Math.floor(bad / ne0));
        } else {
          decode(input, rows, r0);
        }
        out.set(input);
      };
    }
    chunks.push(chunk);
  }
  return chunks;
}

/** Writes the output of a GGUF-input plan; resumable like every to-gguf run. */
export async function runGgufSource(plan: GgufSourcePlan, opts: GgufSourceRunOptions): Promise<ToGgufSummary> {
  const { reader, layout, output } = plan;
  const ctx: Ctx = {
    threads: opts.threads,
    chunkBytes: opts.chunkBytes ?? DEFAULT_CHUNK_BYTES,
    allowNonFinite: opts.allowNonFinite ?? false,
    scratch: { buf: new Float32Array(0) },
    reader,
    ...(plan.imatrix ? { imatrix: plan.imatrix.weights } : {}),
  };
  const inputs: unknown[] = [];
  for (const f of reader.files) {
    const s = await stat(f.path);
    inputs.push([basename(f.path), s.size, Math.floor(s.mtimeMs)]);
  }
  return runGgufJob({
    layout,
    tensors: output.tensors,
    identity: { input: "gguf", inputs, ...(plan.imatrix ? { imatrix: plan.imatrix.loaded.sha256 } : {}) },
    reader: new GgufRangeReader(reader),
    checkSpace: (dir, bytes) => checkFreeSpace(dir, bytes, new LocalSource(dirname(reader.path)), []),
    chunks: async (i) => tensorChunks(ctx, output.tensors[i]!),
  }, opts);
}
