/**
 * The error table of `to-gguf --target-size`: for every tensor to be planned and every candidate type,
 * the imatrix-weighted squared error of quantizing a sample of its rows (quant/target-mix.ts,
 * `rowErrorSums`). One pass over the checkpoint, tensor by tensor, holding only the sampled rows: up
 * to `rows` rows per tensor, spread evenly over the tensor and, for a stack of experts (or the heads
 * of attn_k_b/attn_v_b), over up to `experts` of its matrices. The rows are the values to-gguf quantizes (FP8 dequantized and BF16-rounded,
 * experts stacked, kv_b_proj split), through the same decoder.
 */
import { DeepcastError } from "../errors.js";
import type { GgmlType } from "../formats/ggml-types.js";
import { FP8_BLOCK } from "../formats/fp8.js";
import type { CheckpointSource } from "../io/source.js";
import { ShardReader } from "../io/shard-reader.js";
import type { Kernels } from "../quant/kernels.js";
import { rowErrorSums, type ErrorSums } from "../quant/target-mix.js";
import type { GgufOutputTensor } from "./gguf-output.js";
import { kvBSplit, type HfSourceRef } from "./gguf-plan.js";
import { decodeRows, elemSize, type DecodeCtx } from "./to-gguf.js";
import { decodeFp4 } from "../formats/mxfp4-repack.js";
import { e8m0ToF32Array } from "../formats/e8m0.js";

export interface SampleOptions {
  kernels: Kernels;
  /** Rows sampled per tensor (default 32). */
  rows?: number;
  /** Experts of a stack the rows are spread over (default 8). */
  experts?: number;
  /** imatrix weights by tensor name (ne0 per matrix), as to-gguf quantizes with them. */
  imatrix?: ReadonlyMap<string, Float32Array>;
  onTensor?: (name: string, index: number, count: number) => void;
}

/** Error sums per candidate type (by type id) of one tensor, and how many rows they cover. */
export interface TensorErrorSums {
  rows: number;
  byType: Map<number, ErrorSums>;
}

/** The output rows (flat index over ne1 x ne2) sampled from a tensor: spread over matrices, then rows. */
export function sampleRows(ne: readonly number[], rows: number, experts: number, stacked: boolean): number[] {
  const ne1 = ne[1] ?? 1;
  const nMat = ne.slice(2).reduce((a, b) => a * b, 1);
  const spread = (n: number, k: number) => Array.from({ length: Math.min(n, k) }, (_, i) => Math.floor(((i + 0.5) * n) / Math.min(n, k)));
  if (!stacked) return spread(ne1 * nMat, rows);
  const mats = spread(nMat, experts);
  const per = Math.max(1, Math.ceil(rows / mats.length));
  return mats.flatMap((m) => spread(ne1, per).map((r) => m * ne1 + r));
}

/** Measures the error sums of `tensors` for their candidate types, streaming the checkpoint once. */
export async function measureErrorTable(
  source: CheckpointSource,
  tensors: readonly { tensor: GgufOutputTensor; candidates: readonly GgmlType[] }[],
  opts: SampleOptions,
): Promise<Map<string, TensorErrorSums>> {
  const reader = new ShardReader(source);
  const ctx: DecodeCtx = { k: opts.kernels, threads: 1, scales: new Map(), allowNonFinite: false, where: source.description };
  const out = new Map<string, TensorErrorSums>();
  try {
    for (const [i, { tensor: t, candidates }] of tensors.entries()) {
      opts.onTensor?.(t.name, i, tensors.length);
      const ne0 = t.ne[0] ?? 1;
      const ne1 = t.ne[1] ?? 1;
      const picked = sampleRows(t.ne, opts.rows ?? 32, opts.experts ?? 8, t.source.kind !== "tensor");
      const values = await readOutputRows(reader, ctx, t, picked);
      const w = opts.imatrix?.get(t.name);
      const byType = new Map<number, ErrorSums>();
      // rows of one matrix share its imatrix weights
      const groups = new Map<number, number[]>();
      for (const [k, r] of picked.entries()) {
        const m = Math.floor(r / ne1);
        groups.set(m, [...(groups.get(m) ?? []), k]);
      }
      // all zeros (a sparse file) or no data: nothing to measure, the caller uses the stand-in
      let energy = 0;
      for (let j = 0; j < values.length; j++) energy += values[j]! * values[j]!;
      for (const type of energy > 0 && Number.isFinite(energy) ? candidates : []) {
        if (!type.quantizer) continue; // no kernel in this build yet (dry runs): the stand-in
        const sums: ErrorSums = { err: 0, signal: 0 };
        for (const [m, ks] of groups) {
          const v = new Float32Array(ks.length * ne0);
          ks.forEach((k, j) => v.set(values.subarray(k * ne0, (k + 1) * ne0), j * ne0));
          const s = rowErrorSums(type, v, ks.length, ne0, w ? w.subarray(m * ne0, (m + 1) * ne0) : null);
          sums.err += s.err;
          sums.signal += s.signal;
        }
        byType.set(type.id, sums);
      }
      out.set(t.name, { rows: picked.length, byType });
    }
  } finally {
    await reader.close();
  }
  return out;
}

/** The float32 values to-gguf quantizes for output rows `rows` of `t`, row after row. */
export async function readOutputRows(reader: ShardReader, ctx: DecodeCtx, t: GgufOutputTensor, rows: readonly number[]): Promise<Float32Array> {
  const ne0 = t.ne[0] ?? 1;
  const ne1 = t.ne[1] ?? 1;
  const round = t.inputType.name === "BF16";
  const out = new Float32Array(rows.length * ne0);
  const s = t.source;
  ctx.scales.clear();
  if (s.kind === "kv_b") {
    // per sampled head: its qkNope + vHead source rows (from the start of their FP8 scale block), split as to-gguf does
    const cols = s.src.shape[1]!;
    const per = s.qkNope + s.vHead;
    const es = elemSize(s.src);
    await loadScale(reader, ctx, s.src);
    const heads = new Map<number, Float32Array>();
    for (const [k, row] of rows.entries()) {
      const h = Math.floor(row / ne1);
      let part = heads.get(h);
      if (!part) {
        const first = h * per;
        const r0 = s.src.dtype === "F8_E4M3" ? Math.floor(first / FP8_BLOCK) * FP8_BLOCK : first;
        const n = first + per - r0;
        const input = new Uint8Array(new ArrayBuffer(n * cols * es));
        await reader.read({ file: s.src.file, tensor: s.src.name, offset: r0 * cols * es, length: n * cols * es }, input);
        const v = new Float32Array(n * cols);
        decodeRows(ctx, s.src, input, r0, n, cols, round, v);
        part = kvBSplit(v.subarray((first - r0) * cols), s.part, { ...s, nHead: 1 });
        heads.set(h, part);
      }
      const r = row % ne1;
      out.set(part.subarray(r * ne0, (r + 1) * ne0), k * ne0);
    }
    return out;
  }
  if (s.kind === "mxfp4") {
    // V4 routed experts: the exact FP4 values (what ggml's MXFP4 dequantizer gives) of the sampled rows
    const cols = ne0;
    for (const [k, row] of rows.entries()) {
      const { weight, scale } = s.experts[Math.floor(row / ne1)]!;
      const r = row % ne1;
      const packed = new Uint8Array(cols / 2);
      const sc = new Uint8Array(cols / 32);
      await reader.read({ file: weight.file, tensor: weight.name, offset: r * (cols / 2), length: cols / 2 }, packed);
      await reader.read({ file: scale.file, tensor: scale.name, offset: r * (cols / 32), length: cols / 32 }, sc);
      decodeFp4(packed, sc, 1, cols, out.subarray(k * ne0, (k + 1) * ne0));
    }
    return out;
  }
  if (s.kind === "i32" || s.kind === "concat") throw new DeepcastError(`internal: ${s.kind} tensors are not sampled`, { tensor: t.name });
  for (const [k, row] of rows.entries()) {
    const [src, r] = s.kind === "stack" ? [s.experts[Math.floor(row / ne1)]!, row % ne1] : [s.src, row];
    const cols = src.shape[src.shape.length - 1] ?? 1;
    if (cols !== ne0) throw new DeepcastError(`row length ${cols} of the source does not match ne0 ${ne0}`, { tensor: t.name, file: src.file });
    if (src.scaleInv && !ctx.scales.has(src.name)) await loadScale(reader, ctx, src);
    const es = elemSize(src);
    const input = new Uint8Array(new ArrayBuffer(cols * es));
    await reader.read({ file: src.file, tensor: src.name, offset: r * cols * es, length: cols * es }, input);
    const r0 = src.dtype === "F8_E4M3" ? Math.floor(r / FP8_BLOCK) * FP8_BLOCK : r;
    decodeRows(ctx, src, input, r0, 1, cols, round, out.subarray(k * ne0, (k + 1) * ne0));
  }
  return out;
}

export async function loadScale(reader: ShardReader, ctx: DecodeCtx, src: HfSourceRef): Promise<void> {
  if (!src.scaleInv) return;
  const raw = await reader.readTensor(src.scaleInv.file, src.scaleInv.name);
  ctx.scales.set(src.name, src.scaleInv.dtype === "F8_E8M0"
    ? e8m0ToF32Array(raw)
    : new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4));
}
