/**
 * `deepcast to-gguf`: an FP8 (or BF16) DeepSeek-V3 checkpoint straight to GGUF in one pass. Each
 * output tensor is produced chunk by chunk: source rows are decoded to the float32 values a BF16
 * intermediate would hold (fp8-to-bf16's kernel, BF16-rounded), rearranged where llama.cpp's
 * converter does (experts stacked, kv_b_proj split), then quantized with the ggml-identical kernels.
 */
import { basename, resolve } from "node:path";
import { DeepcastError } from "../errors.js";
import type { PlanDescription } from "../io/dry-run.js";
import { checkpointIdentity, loadCheckpoint, type Checkpoint } from "../io/checkpoint.js";
import { checkCheckpointConfig } from "../io/hf-config.js";
import { planGgufLayout, type GgufLayout, type GgufSplitOptions } from "../io/gguf-layout.js";
import { imatrixForTensors, imatrixKvs, type Imatrix, type ImatrixUse } from "../io/imatrix.js";
import type { CheckpointSource } from "../io/source.js";
import { rowBytes, type GgmlType } from "../formats/ggml-types.js";
import type { FtypeInfo, MixPlan } from "../quant/mix.js";
import { DTYPE_SIZE } from "../io/dtypes.js";
import { dequantizeRows, quantizeFp8Rows, quantizeRows } from "../quant/ggml.js";
import { FP8_BLOCK, scaleNameOf } from "../formats/fp8.js";
import { fp8NanError, type Kernels } from "../quant/kernels.js";
import { kvBSplit, planDeepseek2Gguf, type GgufModel, type HfSourceRef } from "./gguf-plan.js";
import { planDeepseek4Gguf, type MtpMode } from "./gguf-plan-deepseek4.js";
import { deepseek4Format } from "../formats/deepseek4-names.js";
import { decodeFp4, repackFp4ToMxfp4 } from "../formats/mxfp4-repack.js";
import { readBlockScale } from "./block-scale.js";
import { checkE8m0 } from "../formats/e8m0.js";
import { planGgufOutput, type GgufOutputOptions, type GgufOutputPlan, type GgufOutputTensor } from "./gguf-output.js";
import { hfModelFiles } from "./hf-model-files.js";
import { ShardReader } from "../io/shard-reader.js";
import { DEFAULT_CHUNK_BYTES, type Chunk } from "./pipeline.js";
import { runGgufJob, type ChunkGroup, type GgufRunOptions, type ToGgufSummary } from "./gguf-run.js";
import { checkFreeSpace, freeBytes } from "../io/write.js";
import { fmtBytes } from "../units.js";

export interface ToGgufPlan {
  ckpt: Checkpoint;
  output: GgufOutputPlan;
  layout: GgufLayout;
  /** With --imatrix: the file and the weights each quantized tensor gets. */
  imatrix?: { loaded: Imatrix } & ImatrixUse;
}

export async function planToGguf(
  source: CheckpointSource,
  out: string,
  opts: GgufOutputOptions & { split?: GgufSplitOptions; name?: string; imatrix?: Imatrix; mtp?: MtpMode },
): Promise<ToGgufPlan> {
  const ckpt = await loadCheckpoint(source);
  const model = await planGgufModel(ckpt, { ...(opts.name ? { name: opts.name } : {}), ...(opts.mtp ? { mtp: opts.mtp } : {}) });
  const { imatrix: im, ...outOpts } = opts;
  const output = planGgufOutput(model, im ? { ...outOpts, hasImatrix: true } : outOpts);
  let imatrix: ToGgufPlan["imatrix"];
  if (im) {
    // as llama-quantize: KVs appended after general.file_type; tensors whose type changes look up their entry
    if (output.style !== "quantize") throw new DeepcastError(`--imatrix applies to quantized outputs, not ${output.ftype.name}`, { file: im.file });
    output.kvs.push(...imatrixKvs(im));
    const quantized = output.tensors.filter((t) => t.type !== t.inputType);
    imatrix = { loaded: im, ...imatrixForTensors(im, quantized.map((t) => ({ name: t.name, ne: t.ne, requiresImatrix: t.mix?.requiresImatrix ?? false })), { dryRun: opts.dryRun ?? false }) };
  }
  const layout = planGgufLayout(
    resolve(out),
    output.kvs,
    output.tensors.map((t) => ({ name: t.name, ne: t.ne, type: t.type })),
    { style: output.style === "convert" ? "gguf-py" : "gguf-split", ...opts.split },
  );
  return { ckpt, output, layout, ...(imatrix ? { imatrix } : {}) };
}

/** The generation's planner, by config.json's architecture (V4 has its own; V2/V3/V3.2 share one). */
export async function planGgufModel(ckpt: Checkpoint, opts: { name?: string; mtp?: MtpMode }): Promise<GgufModel> {
  const arch = Array.isArray(ckpt.config?.architectures) ? ckpt.config!.architectures[0] : undefined;
  // The GGUF metadata takes its dimensions from config.json: they must agree with the tensors.
  if (deepseek4Format().hfArchitectures.includes(arch as string)) {
    checkCheckpointConfig(ckpt, "present");
    return planDeepseek4Gguf(await hfModelFiles(ckpt), opts);
  }
  checkCheckpointConfig(ckpt, "full", { accept: ["deepseek-v32"] });
  return planDeepseek2Gguf(await hfModelFiles(ckpt), opts);
}

/** Reused float32 scratch (conversions run one at a time on the main thread). */
class Scratch {
  private buf = new Float32Array(0);
  get(n: number): Float32Array {
    if (this.buf.length < n) this.buf = new Float32Array(n);
    return this.buf.subarray(0, n);
  }
}

/** Rows per chunk: whole 128-row blocks for FP8, about `chunkBytes` of float32 values. */
function rowsPerChunk(src: HfSourceRef, cols: number, chunkBytes: number): number {
  const rows = Math.max(1, Math.floor(chunkBytes / 4 / Math.max(1, cols)));
  return src.dtype === "F8_E4M3" ? Math.max(FP8_BLOCK, Math.floor(rows / FP8_BLOCK) * FP8_BLOCK) : rows;
}

interface Ctx {
  k: Kernels;
  threads: number;
  chunkBytes: number;
  scratch: Scratch;
  split: Scratch;
  scales: Map<string, Float32Array>;
  /** imatrix weights by tensor name (ne0 per matrix: expert, or head of attn_k_b/attn_v_b). */
  imatrix?: Map<string, Float32Array>;
  /** The input as messages name it. */
  where: string;
  allowNonFinite: boolean;
}

/** What decoding rows needs: the kernels, and the FP8 scales of the tensor's sources by name. */
export type DecodeCtx = Pick<Ctx, "k" | "threads" | "scales" | "allowNonFinite" | "where">;

/**
 * Decodes rows [r0, r0+rows) of `src` (raw bytes in `input`) to float32 in `dst`; `round` rounds
 * through BF16, i.e. yields exactly what a BF16 intermediate checkpoint would hold. For FP8, r0 must
 * start a 128-row scale block (a single row inside a block: pass the block's start and rows = 1).
 */
export function decodeRows(ctx: DecodeCtx, src: HfSourceRef, input: Uint8Array, r0: number, rows: number, cols: number, round: boolean, dst: Float32Array): void {
  const { k, threads } = ctx;
  const u16 = () => new Uint16Array(input.buffer, input.byteOffset, rows * cols);
  switch (src.dtype) {
    case "F8_E4M3": {
      const nan = k.fp8ToF32(input, rows, cols, fp8Scales(ctx, src, r0, rows, cols), dst, threads, round);
      checkFp8Nan(ctx, src, nan, input, r0, cols);
      return;
    }
    case "BF16":
      k.bf16ToF32(u16(), dst, threads);
      return;
    case "F16":
      k.f16ToF32(u16(), dst, threads);
      break;
    case "F32":
      dst.set(new Float32Array(input.buffer.slice(input.byteOffset, input.byteOffset + rows * cols * 4)));
      break;
    default:
      throw new DeepcastError(`cannot convert a ${src.dtype} tensor to GGUF`, { file: src.file, tensor: src.name });
  }
  if (round) {
    const h = new Uint16Array(dst.length);
    k.f32ToBf16(dst, h, threads);
    k.bf16ToF32(h, dst, threads);
  }
}

/** The block scales of FP8 rows [r0, r0+rows) of `src` (r0 starts a 128-row block). */
function fp8Scales(ctx: DecodeCtx, src: HfSourceRef, r0: number, rows: number, cols: number): Float32Array {
  const scale = ctx.scales.get(src.name);
  if (!scale) throw new DeepcastError(`FP8 weight has no ${scaleNameOf(src.name)}`, { file: src.file, tensor: src.name });
  const sc = Math.ceil(cols / FP8_BLOCK);
  const s0 = r0 / FP8_BLOCK;
  return scale.subarray(s0 * sc, (s0 + Math.ceil(rows / FP8_BLOCK)) * sc);
}

function checkFp8Nan(ctx: DecodeCtx, src: HfSourceRef, nan: number, codes: Uint8Array, r0: number, cols: number): void {
  if (nan > 0 && !ctx.allowNonFinite) throw fp8NanError(nan, codes, r0, cols, { file: `${ctx.where}/${src.file}`, tensor: src.name });
}

export const elemSize = (src: HfSourceRef) => DTYPE_SIZE[src.dtype];

/**
 * Quantizes rows [row0, row0+rows) of a tensor of `type` (ne0 values per row, `rowsPerMat` rows per
 * matrix) into `out`; with imatrix `weights` (ne0 per matrix), matrix m gets [m*ne0, (m+1)*ne0), as
 * llama-quantize does per expert.
 */
export function encodeRows(
  type: GgmlType, values: Float32Array, rows: number, ne0: number, out: Uint8Array, row0: number, rowsPerMat: number,
  weights: Float32Array | undefined, threads: number,
): void {
  if (type.name === "F32") out.set(new Uint8Array(values.buffer, values.byteOffset, rows * ne0 * 4));
  else if (!weights) quantizeRows(type.name, values, rows, ne0, null, threads, out);
  else {
    const rb = rowBytes(type.name, ne0);
    for (let r = 0; r < rows;) {
      const m = Math.floor((row0 + r) / rowsPerMat);
      const n = Math.min(rows - r, (m + 1) * rowsPerMat - (row0 + r));
      quantizeRows(type.name, values.subarray(r * ne0, (r + n) * ne0), n, ne0, weights.subarray(m * ne0, (m + 1) * ne0), threads, out.subarray(r * rb, (r + n) * rb));
      r += n;
    }
  }
}

/** Chunks that produce output tensor `t`, in order, in groups. */
function tensorGroups(ctx: Ctx, t: GgufOutputTensor, reader: ShardReader): ChunkGroup[] {
  const round = t.inputType.name === "BF16";
  const weights = ctx.imatrix?.get(t.name);
  const rowsPerMat = t.ne[1] ?? 1;
  // llama-quantize reads a quantized input tensor (V4's Q8_0) back through ggml's dequantizer first
  const requant = t.inputType.quantized && t.inputType !== t.type && t.source.kind !== "mxfp4";
  const encode = (values: Float32Array, rows: number, ne0: number, out: Uint8Array, row0: number) => {
    if (requant) {
      const q = quantizeRows(t.inputType.name, values, rows, ne0, null, ctx.threads);
      dequantizeRows(t.inputType.name, q, rows, ne0, ctx.threads, values);
    }
    encodeRows(t.type, values, rows, ne0, out, row0, rowsPerMat, weights, ctx.threads);
  };
  const rowChunks = (src: HfSourceRef, base: number): Chunk[] => {
    const cols = src.shape.length === 0 ? 1 : src.shape[src.shape.length - 1]!;
    const totalRows = src.shape.slice(0, -1).reduce((a, b) => a * b, 1);
    const step = rowsPerChunk(src, cols, ctx.chunkBytes);
    const chunks: Chunk[] = [];
    for (let r0 = 0; r0 < totalRows; r0 += step) {
      const rows = Math.min(step, totalRows - r0);
      // FP8 rows go straight to the output type, row by row in cache, when they lie in one matrix.
      const m = Math.floor((base + r0) / rowsPerMat);
      const fused = src.dtype === "F8_E4M3" && !requant && Math.floor((base + r0 + rows - 1) / rowsPerMat) === m;
      chunks.push({
        tensor: t.name,
        src: { file: src.file, tensor: src.name, offset: r0 * cols * elemSize(src), length: rows * cols * elemSize(src) },
        outBytes: rows * rowBytes(t.type.name, cols),
        convert: (input, out) => {
          if (fused) {
            const imatrix = weights ? weights.subarray(m * cols, (m + 1) * cols) : null;
            const nan = quantizeFp8Rows(t.type, input, rows, cols, fp8Scales(ctx, src, r0, rows, cols), { bf16Round: round, imatrix, threads: ctx.threads, kernels: ctx.k }, out);
            checkFp8Nan(ctx, src, nan, input, r0, cols);
            return;
          }
          const values = ctx.scratch.get(rows * cols);
          decodeRows(ctx, src, input, r0, rows, cols, round, values);
          encode(values, rows, cols, out, base + r0);
        },
      });
    }
    return chunks;
  };
  const s = t.source;
  switch (s.kind) {
    case "tensor":
      return [{ chunks: rowChunks(s.src, 0) }];
    case "stack":
      return [{ chunks: s.experts.flatMap((src, e) => rowChunks(src, e * rowsPerMat)) }];
    case "mxfp4":
      return s.experts.map(({ weight, scale }, e) => mxfp4Group(ctx, t, reader, weight, scale, e * rowsPerMat, encode));
    case "i32":
      return [{ chunks: i32Chunks(ctx, t, s.src) }];
    case "concat":
      return [concatGroup(ctx, t, reader, s.parts, round, encode)];
    case "kv_b":
      break;
  }
  // kv_b_proj is small (32768 x 512 in the real model): decode it whole, then split and transpose.
  const [rows, cols] = s.src.shape as [number, number];
  const ne0 = s.part === "k_b" ? s.qkNope : s.kvLora;
  const n = s.nHead * (s.part === "k_b" ? s.qkNope : s.vHead) * s.kvLora;
  return [{ chunks: [{
    tensor: t.name,
    src: { file: s.src.file, tensor: s.src.name, offset: 0, length: rows * cols * elemSize(s.src) },
    outBytes: (n / ne0) * rowBytes(t.type.name, ne0),
    convert: (input, out) => {
      const values = ctx.scratch.get(rows * cols);
      decodeRows(ctx, s.src, input, 0, rows, cols, round, values);
      const part = kvBSplit(values, s.part, s, ctx.split.get(n));
      encode(part, n / ne0, ne0, out, 0);
    },
  }] }];
}

type Encode = (values: Float32Array, rows: number, ne0: number, out: Uint8Array, row0: number) => void;

/**
 * One routed expert of a V4 MXFP4 tensor: its E8M0 scales are read first; rows of packed FP4 are then
 * repacked into ggml MXFP4 blocks (an MXFP4 output: bits moved, values identical), or decoded to their
 * exact values and quantized (any other output type, as llama-quantize on the converted file).
 */
function mxfp4Group(ctx: Ctx, t: GgufOutputTensor, reader: ShardReader, weight: HfSourceRef, scale: HfSourceRef, base: number, encode: Encode): ChunkGroup {
  const rows = weight.shape[0]!;
  const cols = weight.shape[1]! * 2;
  const nb = cols / 32;
  let scales: Uint8Array = new Uint8Array(0);
  const step = Math.max(1, Math.floor(ctx.chunkBytes / (cols * 4)));
  const chunks: Chunk[] = [];
  for (let r0 = 0; r0 < rows; r0 += step) {
    const n = Math.min(step, rows - r0);
    chunks.push({
      tensor: t.name,
      src: { file: weight.file, tensor: weight.name, offset: r0 * (cols / 2), length: n * (cols / 2) },
      outBytes: n * rowBytes(t.type.name, cols),
      convert: (input, out) => {
        const sc = scales.subarray(r0 * nb, (r0 + n) * nb);
        if (t.type.name === "MXFP4") {
          repackFp4ToMxfp4(input, sc, n, cols, out);
        } else {
          const values = ctx.scratch.get(n * cols);
          decodeFp4(input, sc, n, cols, values);
          encode(values, n, cols, out, base + r0);
        }
      },
    });
  }
  return {
    prepare: async () => {
      scales = await reader.readTensor(scale.file, scale.name);
      if (!ctx.allowNonFinite) checkE8m0(scales, nb, { file: `${ctx.where}/${scale.file}`, tensor: scale.name });
    },
    chunks,
  };
}

/** An integer table (V4's tid2eid, I64 or I32) as I32: torch's .to(int32) keeps the low 32 bits. */
function i32Chunks(ctx: Ctx, t: GgufOutputTensor, src: HfSourceRef): Chunk[] {
  const es = elemSize(src);
  const cols = src.shape[src.shape.length - 1] ?? 1;
  const totalRows = src.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const step = Math.max(1, Math.floor(ctx.chunkBytes / (cols * es)));
  const chunks: Chunk[] = [];
  for (let r0 = 0; r0 < totalRows; r0 += step) {
    const rows = Math.min(step, totalRows - r0);
    chunks.push({
      tensor: t.name,
      src: { file: src.file, tensor: src.name, offset: r0 * cols * es, length: rows * cols * es },
      outBytes: rows * cols * 4,
      convert: (input, out) => {
        if (es === 4) out.set(input);
        else for (let i = 0; i < rows * cols; i++) out.set(input.subarray(i * 8, i * 8 + 4), i * 4); // little-endian low word
      },
    });
  }
  return chunks;
}

/**
 * V4's MTP eh_proj = cat(e_proj, h_proj, dim=1), both FP8: h_proj (4096 x 4096 in Flash) is read whole
 * first; each chunk of e_proj rows is joined with the same rows of h_proj.
 */
function concatGroup(ctx: Ctx, t: GgufOutputTensor, reader: ShardReader, parts: HfSourceRef[], round: boolean, encode: Encode): ChunkGroup {
  const [e, h] = parts as [HfSourceRef, HfSourceRef];
  const rows = e.shape[0]!;
  const ce = e.shape[1]!;
  const ch = h.shape[1]!;
  let hRaw: Uint8Array = new Uint8Array(0);
  const step = Math.max(FP8_BLOCK, Math.floor(ctx.chunkBytes / ((ce + ch) * 4) / FP8_BLOCK) * FP8_BLOCK);
  const chunks: Chunk[] = [];
  for (let r0 = 0; r0 < rows; r0 += step) {
    const n = Math.min(step, rows - r0);
    chunks.push({
      tensor: t.name,
      src: { file: e.file, tensor: e.name, offset: r0 * ce * elemSize(e), length: n * ce * elemSize(e) },
      outBytes: n * rowBytes(t.type.name, ce + ch),
      convert: (input, out) => {
        const ve = new Float32Array(n * ce);
        const vh = new Float32Array(n * ch);
        decodeRows(ctx, e, input, r0, n, ce, round, ve);
        decodeRows(ctx, h, hRaw.subarray(r0 * ch * elemSize(h), (r0 + n) * ch * elemSize(h)), r0, n, ch, round, vh);
        const values = ctx.scratch.get(n * (ce + ch));
        for (let r = 0; r < n; r++) {
          values.set(ve.subarray(r * ce, (r + 1) * ce), r * (ce + ch));
          values.set(vh.subarray(r * ch, (r + 1) * ch), r * (ce + ch) + ce);
        }
        encode(values, n, ce + ch, out, r0);
      },
    });
  }
  return {
    prepare: async () => {
      hRaw = await reader.readTensor(h.file, h.name);
    },
    chunks,
  };
}

function sourcesOf(t: GgufOutputTensor): HfSourceRef[] {
  const s = t.source;
  switch (s.kind) {
    case "stack": return s.experts;
    case "mxfp4": return [];
    case "concat": return s.parts;
    default: return [s.src];
  }
}

/** What the imatrix of a plan covers, for reports. */
export function imatrixSummary(plan: Pick<ToGgufPlan, "imatrix">) {
  const im = plan.imatrix;
  return im && {
    file: im.loaded.file,
    entries: im.loaded.entries.size,
    withWeights: im.weights.size,
    missing: im.missing,
    sizeMismatch: im.sizeMismatch,
    missingRequired: im.missingRequired,
  };
}

/** The --dry-run description of a plan: files, per-type totals, every tensor. */
export function describeToGguf(
  plan: Pick<ToGgufPlan, "layout" | "imatrix"> & { output: { ftype: FtypeInfo; mix?: MixPlan | undefined; fileType?: number } },
  input: string,
  out: string,
): PlanDescription {
  const { layout, output } = plan;
  const im = imatrixSummary(plan);
  const perType = new Map<string, { tensors: number; bytes: number }>();
  const tensors = layout.files.flatMap((f) => f.tensors.map((t) => ({ name: t.name, ne: t.ne, type: t.type.name, bytes: t.nbytes, file: basename(f.path) })));
  for (const t of tensors) {
    const e = perType.get(t.type) ?? { tensors: 0, bytes: 0 };
    e.tensors++;
    e.bytes += t.bytes;
    perType.set(t.type, e);
  }
  const files = layout.files.map((f) => ({ file: f.path, tensors: f.tensors.length, bytes: f.fileSize }));
  const requiresImatrix = output.mix?.requiresImatrix ?? [];
  return {
    command: "to-gguf",
    input,
    output: out,
    fields: {
      quant: output.ftype.name,
      fileType: output.mix?.fileType ?? output.fileType ?? output.ftype.id,
      tensorCount: layout.tensorCount,
      totalBytes: layout.totalBytes,
      files,
      types: Object.fromEntries(perType),
      fallbacks: output.mix?.nFallback ?? 0,
      requiresImatrix,
      ...(im ? { imatrix: im } : {}),
      tensors,
    },
    lines: [
      ...tensors.map((t) => `${t.name.padEnd(40)} ${JSON.stringify(t.ne).padEnd(22)} ${t.type.padEnd(5)} ${fmtBytes(t.bytes)}`),
      "",
      ...[...perType].map(([type, e]) => `${type.padEnd(5)} ${String(e.tensors).padStart(6)} tensors  ${fmtBytes(e.bytes)}`),
      ...files.map((f) => `${f.file}  ${f.tensors} tensors  ${fmtBytes(f.bytes)}`),
      `${layout.tensorCount} tensors, ${fmtBytes(layout.totalBytes)} (${output.ftype.name})`,
      ...(im?.missingRequired.length ? [`the importance matrix has no entry for ${im.missingRequired.length} tensor(s) that need one: ${im.missingRequired.join(", ")}`] : []),
      ...(requiresImatrix.length && !im ? [`needs an importance matrix for ${requiresImatrix.length} tensor(s) (--imatrix)`] : []),
    ],
    outputBytes: layout.totalBytes,
  };
}

export interface ToGgufRunOptions extends GgufRunOptions {
  kernels: Kernels;
  threads: number;
  chunkBytes?: number;
  /** Keep FP8 NaN codes and non-finite or absurd scales instead of failing. */
  allowNonFinite?: boolean;
}

export type { ToGgufSummary } from "./gguf-run.js";
export { CHECKPOINT_BYTES } from "./gguf-run.js";

export async function runToGguf(plan: ToGgufPlan, opts: ToGgufRunOptions): Promise<ToGgufSummary> {
  const { ckpt, layout, output } = plan;
  const ctx: Ctx = {
    k: opts.kernels,
    threads: opts.threads,
    chunkBytes: opts.chunkBytes ?? DEFAULT_CHUNK_BYTES,
    scratch: new Scratch(),
    split: new Scratch(),
    scales: new Map(),
    where: ckpt.source.description,
    allowNonFinite: opts.allowNonFinite ?? false,
    ...(plan.imatrix ? { imatrix: plan.imatrix.weights } : {}),
  };
  const reader = new ShardReader(ckpt.source);
  return runGgufJob({
    layout,
    tensors: output.tensors,
    identity: { inputs: await checkpointIdentity(ckpt), ...(plan.imatrix ? { imatrix: plan.imatrix.loaded.sha256 } : {}) },
    inputDir: ckpt.source.description,
    reader,
    checkSpace: (dir, bytes) => checkFreeSpace(dir, bytes, ckpt.source, ckpt.shards),
    groups: async (i) => {
      const t = output.tensors[i]!;
      ctx.scales.clear();
      for (const src of sourcesOf(t)) {
        if (!src.scaleInv) continue;
        ctx.scales.set(src.name, await readBlockScale(reader, src.scaleInv, src.shape[1]!, `${ckpt.source.description}/${src.scaleInv.file}`, ctx.allowNonFinite));
      }
      return tensorGroups(ctx, t, reader);
    },
  }, opts);
}
