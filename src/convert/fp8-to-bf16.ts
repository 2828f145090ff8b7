/**
 * `deepcast fp8-to-bf16`: FP8 e4m3 weights with 128x128 `weight_scale_inv` blocks -> BF16, with the
 * semantics of DeepSeek's `fp8_cast_bf16.py` (bf16(f32(fp8) * scale_inv), one RNE rounding), shard by
 * shard under the input's file names, the index and config rewritten, small files copied. DeepSeek-V3.2
 * is the same (its indexer weights included). DeepSeek-V4 (deepcast's definition, README): FP8 x
 * 2^(e-127) with E8M0 `.scale` tiles and packed FP4 experts e2m1 x 2^(e-127), both exact in BF16; or,
 * with `experts: "fp8"`, everything kept as stored except the experts, cast losslessly FP4 -> FP8.
 */
import { join } from "node:path";
import { DeepcastError } from "../errors.js";
import { progressMeter, type OnEvent } from "../events.js";
import type { PlanDescription } from "../io/dry-run.js";
import { checkpointIdentity, locate, INDEX_FILE, type Checkpoint, type TensorLocation } from "../io/checkpoint.js";
import { DTYPE_SIZE, numel, safetensorsOrder, type Dtype } from "../io/dtypes.js";
import { checkE8m0 } from "../formats/e8m0.js";
import { SafetensorsWriter, safetensorsFileSize, type TensorSpec } from "../io/safetensors.js";
import { weightOfBlockScale } from "../formats/block-scales.js";
import { SCALE_SUFFIX } from "../formats/fp8.js";
import { fp8NanError, type Kernels } from "../quant/kernels.js";
import { ShardReader } from "../io/shard-reader.js";
import { DEFAULT_CHUNK_BYTES, fp8ToBf16Chunks, pump, readE8m0Scale, readFp8Scale, type Chunk } from "./pipeline.js";
import { fp4TileScaleChunk, fp4ToBf16Chunks, fp4ToFp8Chunks } from "./fp4-chunks.js";
import { blockScaleOf } from "../io/checkpoint.js";
import { checkFreeSpace, copyFileAtomic, freeBytes, writeFileAtomic } from "../io/write.js";
import { fmtBytes } from "../units.js";
import { fingerprint, RunState } from "./run-state.js";


/** What a copied tensor's bytes are checked for on the way. */
export type CopyCheck =
  /** An E8M0 scale [rows, cols]: no NaN byte 255. */
  | { kind: "e8m0"; cols: number }
  /** An FP8 e4m3 weight kept as FP8 [rows, cols]: no NaN code (unless allowNonFinite). */
  | { kind: "fp8"; cols: number }
  /** A hash-routing table (I64/I32 [vocab, k]): every entry an expert index below `experts`. */
  | { kind: "expert-ids"; experts: number; cols: number };

export type OutTensor = TensorSpec &
  (| { op: "copy"; from: TensorLocation; check?: CopyCheck }
   /** FP8 -> BF16 with F32 `_scale_inv` (V3.x) or E8M0 `.scale` (V4) tiles. */
   | { op: "fp8"; from: TensorLocation; scale: TensorLocation; scaleKind: "f32" | "e8m0" }
   /** Packed FP4 -> BF16 [rows, cols]. */
   | { op: "fp4"; from: TensorLocation; scale: TensorLocation }
   /** Packed FP4 -> FP8 e4m3 codes [rows, cols] (lossless cast by 128x128 tiles). */
   | { op: "fp4-fp8"; from: TensorLocation; scale: TensorLocation }
   /** The FP8 cast's E8M0 tile scales, computed from the FP4 scale `from` of the weight [rows, cols]. */
   | { op: "fp4-fp8-scale"; from: TensorLocation; rows: number; cols: number });

/** What becomes of routed experts stored as packed FP4 (DeepSeek-V4). */
export type ExpertsMode = "bf16" | "fp8";

export interface PlanOptions {
  /** "fp8": keep every FP8 weight and scale as stored and cast the FP4 experts to FP8 losslessly. */
  experts?: ExpertsMode;
}

export interface ShardPlan {
  name: string;
  metadata: Record<string, string> | null;
  tensors: OutTensor[];
  bytes: number;
}

export interface Fp8ToBf16Plan {
  shards: ShardPlan[];
  /** Output index: the input's weight_map order without the dropped scales. */
  weightMap: Record<string, string>;
  /**
   * config.json with quantization_config (and V4's expert_dtype) removed and torch_dtype bfloat16; with
   * experts "fp8", quantization_config kept and expert_dtype "fp8" (null: none in input).
   */
  config: Record<string, unknown> | null;
  experts: ExpertsMode;
  /** Other top-level files copied as they are (tokenizer, generation config, ...). */
  copyFiles: string[];
  /** Weights dequantized (FP8 and FP4) or, with experts "fp8", FP4 weights cast to FP8. */
  fp8Tensors: number;
  /** Of those, packed FP4 experts. */
  fp4Tensors: number;
  droppedScales: number;
  inputBytes: number;
  outputBytes: number;
}

export function planFp8ToBf16(ckpt: Checkpoint, opts: PlanOptions = {}): Fp8ToBf16Plan {
  const where = (f: string) => `${ckpt.source.description}/${f}`;
  const experts = opts.experts ?? "bf16";
  const shards: ShardPlan[] = [];
  let fp8Tensors = 0;
  let fp4Tensors = 0;
  let droppedScales = 0;
  let inputBytes = 0;
  for (const name of ckpt.shards) {
    const header = ckpt.headers.get(name)!;
    const tensors: OutTensor[] = [];
    for (const entry of header.tensors) {
      inputBytes += entry.end - entry.begin;
      const from = { file: name, entry };
      // A block scale (loadCheckpoint checked every one belongs to an FP8 or FP4 weight of its grid).
      const scaled = weightOfBlockScale(entry.name);
      const owner = scaled !== null ? blockScaleOf(ckpt, scaled) : undefined;
      if (owner && owner.loc.entry.name === entry.name) {
        const w = locate(ckpt, scaled!)!.entry;
        if (experts === "fp8" && owner.rule.kind === "fp4-e8m0") {
          tensors.push({ name: entry.name, dtype: "F8_E8M0", shape: [Math.ceil(w.shape[0]! / 128), Math.ceil((w.shape[1]! * 2) / 128)], op: "fp4-fp8-scale", from, rows: w.shape[0]!, cols: w.shape[1]! * 2 });
        } else if (experts === "fp8" && owner.rule.kind === "fp8-e8m0") {
          tensors.push({ name: entry.name, dtype: entry.dtype, shape: entry.shape, op: "copy", from, check: { kind: "e8m0", cols: entry.shape[1]! } });
        } else {
          droppedScales++;
        }
        continue;
      }
      if (scaled !== null && entry.name.endsWith(SCALE_SUFFIX)) {
        // fp8_cast_bf16.py drops every *_scale_inv, a stray one included.
        droppedScales++;
        continue;
      }
      const scale = blockScaleOf(ckpt, entry.name);
      if (entry.dtype === "F8_E4M3" && scale) {
        if (experts === "fp8" && scale.rule.kind === "fp8-e8m0") {
          tensors.push({ name: entry.name, dtype: entry.dtype, shape: entry.shape, op: "copy", from, check: { kind: "fp8", cols: entry.shape[1]! } });
          continue;
        }
        tensors.push({ name: entry.name, dtype: "BF16", shape: entry.shape, op: "fp8", from, scale: scale.loc, scaleKind: scale.rule.kind === "fp8-f32" ? "f32" : "e8m0" });
        fp8Tensors++;
      } else if (entry.dtype === "I8" && scale?.rule.kind === "fp4-e8m0") {
        const shape = [entry.shape[0]!, entry.shape[1]! * 2];
        if (experts === "fp8") tensors.push({ name: entry.name, dtype: "F8_E4M3", shape, op: "fp4-fp8", from, scale: scale.loc });
        else tensors.push({ name: entry.name, dtype: "BF16", shape, op: "fp4", from, scale: scale.loc });
        fp8Tensors++;
        fp4Tensors++;
      } else if (/\.gate\.tid2eid$/.test(entry.name) && (entry.dtype === "I64" || entry.dtype === "I32") && entry.shape.length === 2 && typeof ckpt.config?.n_routed_experts === "number") {
        // DeepSeek-V4's hash-routing table, kept as stored (I64); its entries must name experts.
        tensors.push({ name: entry.name, dtype: entry.dtype, shape: entry.shape, op: "copy", from, check: { kind: "expert-ids", experts: ckpt.config.n_routed_experts, cols: entry.shape[1]! } });
      } else if (entry.dtype === "F8_E5M2") {
        throw new DeepcastError("F8_E5M2 weights are not supported (DeepSeek checkpoints use F8_E4M3)", { file: where(name), tensor: entry.name });
      } else {
        tensors.push({ name: entry.name, dtype: entry.dtype, shape: entry.shape, op: "copy", from });
      }
    }
    tensors.sort(safetensorsOrder);
    shards.push({ name, metadata: header.metadata, tensors, bytes: safetensorsFileSize(tensors, header.metadata) });
  }
  const kept = new Set(shards.flatMap((s) => s.tensors.map((t) => t.name)));
  const weightMap: Record<string, string> = {};
  for (const [tensor, file] of ckpt.weightMap) if (kept.has(tensor)) weightMap[tensor] = file;

  if (experts === "fp8" && fp4Tensors === 0) {
    throw new DeepcastError("--experts fp8 casts packed FP4 experts (DeepSeek-V4) to FP8, but this checkpoint has none", { file: ckpt.source.description, code: "USAGE" });
  }
  let config: Record<string, unknown> | null = null;
  if (ckpt.config) {
    config = { ...ckpt.config };
    if (experts === "fp8") {
      config.expert_dtype = "fp8";
    } else {
      delete config.quantization_config;
      // V4: the experts are no longer FP4 (transformers/vLLM/SGLang read this key).
      delete config.expert_dtype;
      config.torch_dtype = "bfloat16";
    }
  }
  const shardSet = new Set(ckpt.shards);
  const copyFiles = ckpt.files
    .map((f) => f.name)
    .filter((n) => !shardSet.has(n) && n !== INDEX_FILE && n !== "config.json" && !n.endsWith(".safetensors") && !n.startsWith("."));
  return {
    shards,
    weightMap,
    config,
    copyFiles,
    experts,
    fp8Tensors,
    fp4Tensors,
    droppedScales,
    inputBytes,
    outputBytes: shards.reduce((a, s) => a + s.bytes, 0),
  };
}

/** The chunks that produce one output tensor, bounded by `chunkBytes` of input each. */
function tensorChunks(t: OutTensor, k: Kernels, threads: number, chunkBytes: number, scales: Map<string, Float32Array>, where: string, allowNonFinite: boolean): Chunk[] {
  const size = t.from.entry.end - t.from.entry.begin;
  const chunks: Chunk[] = [];
  if (t.op === "copy") {
    const at = { file: `${where}/${t.from.file}`, tensor: t.name };
    const c = t.check;
    // A checked tensor is cut at whole rows, so an error names its row; an E8M0 scale is read whole.
    const rowBytes = Math.max(1, !c ? 1 : c.kind === "e8m0" ? size : c.kind === "fp8" ? c.cols : c.cols * DTYPE_SIZE[t.dtype]);
    const step = Math.max(rowBytes, Math.floor(chunkBytes / rowBytes) * rowBytes);
    // An empty tensor still gets one (empty) chunk, so the writer sees it.
    let off = 0;
    do {
      const length = Math.min(step, size - off);
      const row0 = off / rowBytes;
      const convert = !c ? undefined : (input: Uint8Array, out: Uint8Array) => {
        if (c.kind === "e8m0") checkE8m0(input, c.cols, at, 254);
        else if (c.kind === "fp8") {
          const nan = input.reduce((n, b) => n + ((b & 0x7f) === 0x7f ? 1 : 0), 0);
          if (nan > 0 && !allowNonFinite) throw fp8NanError(nan, input, row0, c.cols, at);
        } else checkExpertIds(input, t.dtype, c.experts, c.cols, row0, at);
        out.set(input);
      };
      chunks.push({ tensor: t.name, src: { file: t.from.file, tensor: t.name, offset: off, length }, outBytes: length, ...(convert ? { convert } : {}) });
      off += length;
    } while (off < size);
    return chunks;
  }
  const [rows, cols] = t.shape as [number, number];
  const fp4 = (scale: TensorLocation) => ({
    tensor: t.name, weight: { file: t.from.file, name: t.name }, scale: { file: scale.file, name: scale.entry.name },
    rows, cols, where, allowNonFinite, kernels: k, threads, chunkBytes,
  });
  switch (t.op) {
    case "fp8":
      return fp8ToBf16Chunks({ tensor: t.name, file: t.from.file, where: `${where}/${t.from.file}`, allowNonFinite, rows, cols, scale: () => scales.get(t.name)!, kernels: k, threads, chunkBytes });
    case "fp4":
      return fp4ToBf16Chunks(fp4(t.scale));
    case "fp4-fp8":
      return fp4ToFp8Chunks(fp4(t.scale));
    case "fp4-fp8-scale":
      return [fp4TileScaleChunk({ tensor: t.name, weight: { file: "", name: "" }, scale: { file: t.from.file, name: t.name }, rows: t.rows, cols: t.cols, where, allowNonFinite })];
  }
}

/** Every entry of a hash-routing table chunk (rows from `row0`) is an expert index below `experts`. */
function checkExpertIds(bytes: Uint8Array, dtype: Dtype, experts: number, cols: number, row0: number, at: { file: string; tensor: string }): void {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const size = DTYPE_SIZE[dtype];
  for (let i = 0; i < bytes.length / size; i++) {
    const v = size === 8 ? Number(dv.getBigInt64(i * 8, true)) : dv.getInt32(i * 4, true);
    if (v >= 0 && v < experts) continue;
    throw new DeepcastError(`hash-routing table entry [${row0 + Math.floor(i / cols)}, ${i % cols}] = ${v} is not an expert index (n_routed_experts ${experts})`, at);
  }
}

/** The --dry-run description of a plan. */
export function describeFp8ToBf16(plan: Fp8ToBf16Plan, input: string, out: string): PlanDescription {
  const shards = plan.shards.map((s) => ({ file: s.name, tensors: s.tensors.length, bytes: s.bytes }));
  const files = [INDEX_FILE, ...(plan.config ? ["config.json"] : []), ...plan.copyFiles];
  return {
    command: "fp8-to-bf16",
    input,
    output: out,
    fields: { shards, files, fp8Tensors: plan.fp8Tensors, fp4Tensors: plan.fp4Tensors, experts: plan.experts, droppedScales: plan.droppedScales },
    lines: [
      ...shards.map((s) => `${s.file}  ${s.tensors} tensors  ${fmtBytes(s.bytes)}`),
      `files: ${files.join(", ")}`,
      plan.experts === "fp8"
        ? `${plan.fp4Tensors} FP4 expert tensors cast to FP8 (lossless), other tensors kept`
        : `${plan.fp8Tensors} FP8${plan.fp4Tensors ? "/FP4" : ""} tensors dequantized${plan.fp4Tensors ? ` (${plan.fp4Tensors} FP4 experts)` : ""}, ${plan.droppedScales} scales dropped`,
    ],
    inputBytes: plan.inputBytes,
    outputBytes: plan.outputBytes,
  };
}

export interface RunOptions {
  out: string;
  kernels: Kernels;
  threads: number;
  force: boolean;
  chunkBytes?: number;
  skipSpaceCheck?: boolean;
  /** Keep FP8 NaN codes and non-finite or absurd scales instead of failing. */
  allowNonFinite?: boolean;
  /** Progress: start, bytes (per chunk), shard, done. */
  onEvent?: OnEvent;
}

export interface RunSummary {
  shards: number;
  resumedShards: number;
  tensors: number;
  fp8Tensors: number;
  /** Tensor bytes read from the input shards. */
  bytesRead: number;
  /** Bytes of the output shards written by this run (headers included). */
  bytesWritten: number;
}

/** Options that change the output; anything else (threads, chunk size) may differ on resume. */
export async function planFingerprint(ckpt: Checkpoint, plan: Fp8ToBf16Plan): Promise<string> {
  return fingerprint({ command: "fp8-to-bf16", format: 1, inputs: await checkpointIdentity(ckpt), outputs: plan.shards.map((s) => [s.name, s.bytes]), ...(plan.experts === "fp8" ? { experts: "fp8" } : {}) });
}

export async function runFp8ToBf16(ckpt: Checkpoint, plan: Fp8ToBf16Plan, opts: RunOptions): Promise<RunSummary> {
  const inputDir = ckpt.source.description;
  const state = await RunState.open(opts.out, {
    command: "fp8-to-bf16",
    fingerprint: await planFingerprint(ckpt, plan),
    force: opts.force,
    inputDir,
    files: [...plan.shards.map((s) => s.name), INDEX_FILE, ...(plan.config ? ["config.json"] : []), ...plan.copyFiles],
  });
  try {
    return await runOpened(ckpt, plan, opts, state);
  } finally {
    await state.close();
  }
}

async function runOpened(ckpt: Checkpoint, plan: Fp8ToBf16Plan, opts: RunOptions, state: RunState): Promise<RunSummary> {
  const pending: ShardPlan[] = [];
  for (const s of plan.shards) if (!(await state.isDone(s.name))) pending.push(s);
  // Every output counts: the shards still to write, and the index, config and copied files.
  const small = ckpt.files.filter((f) => plan.copyFiles.includes(f.name) || f.name === INDEX_FILE || f.name === "config.json").reduce((a, f) => a + f.size, 0);
  const needed = pending.reduce((a, s) => a + s.bytes, 0) + small;
  if (!opts.skipSpaceCheck) await checkFreeSpace(state.dir, needed, ckpt.source, ckpt.shards);
  const emit: OnEvent = opts.onEvent ?? (() => undefined);
  const started = performance.now();
  emit({ kind: "start", command: "fp8-to-bf16", total: plan.outputBytes, unit: "bytes" });
  const meter = progressMeter(emit, "fp8-to-bf16", "bytes", plan.outputBytes);
  const reader = new ShardReader(ckpt.source);
  const summary: RunSummary = { shards: plan.shards.length, resumedShards: 0, tensors: 0, fp8Tensors: 0, bytesRead: 0, bytesWritten: 0 };
  const chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  // A finished shard is synced, renamed and recorded while the next one is converted: the
  // fsync of gigabytes of dirty pages would otherwise stall the pipeline at every shard boundary.
  let committing: Promise<void> = Promise.resolve();
  try {
    for (const [i, s] of plan.shards.entries()) {
      const t0 = performance.now();
      if (!pending.includes(s)) {
        summary.resumedShards++;
        emit({ kind: "bytes", inBytes: s.tensors.reduce((a, t) => a + t.from.entry.end - t.from.entry.begin, 0), outBytes: s.bytes });
        meter.skip(s.bytes);
        emit({ kind: "shard", shard: s.name, index: i, count: plan.shards.length, skipped: true, bytes: s.bytes, seconds: 0 });
        continue;
      }
      const scales = new Map<string, Float32Array>();
      for (const t of s.tensors) {
        if (t.op !== "fp8") continue;
        const where = `${ckpt.source.description}/${t.scale.file}`;
        const read = t.scaleKind === "f32" ? readFp8Scale : readE8m0Scale;
        scales.set(t.name, await read(reader, { file: t.scale.file, name: t.scale.entry.name }, t.shape[1]!, where, opts.allowNonFinite ?? false));
      }
      const chunks = s.tensors.flatMap((t) => tensorChunks(t, opts.kernels, opts.threads, chunkBytes, scales, ckpt.source.description, opts.allowNonFinite ?? false));
      const writer = await SafetensorsWriter.create(join(state.dir, s.name), s.tensors, s.metadata);
      let shardOut = 0;
      try {
        await pump(chunks, reader, writer, (inB, outB) => {
          summary.bytesRead += inB;
          shardOut += outB;
          emit({ kind: "bytes", inBytes: inB, outBytes: outB });
          meter.add(outB);
        });
        meter.add(s.bytes - shardOut); // the header
      } catch (e) {
        await writer.abort();
        throw e;
      }
      const previous = committing;
      committing = (async () => {
        await previous;
        try {
          await writer.commit();
        } catch (e) {
          await writer.abort();
          throw e;
        }
        await state.markDone(s.name);
        summary.bytesWritten += s.bytes;
        summary.tensors += s.tensors.length;
        summary.fp8Tensors += s.tensors.filter((t) => t.op === "fp8" || t.op === "fp4" || t.op === "fp4-fp8").length;
        emit({ kind: "shard", shard: s.name, index: i, count: plan.shards.length, skipped: false, bytes: s.bytes, seconds: (performance.now() - t0) / 1000 });
      })();
      // Surface a failed commit at the next await rather than as an unhandled rejection.
      committing.catch(() => undefined);
    }
    await committing;
  } finally {
    await committing.catch(() => undefined);
    await reader.close();
  }
  await writeSmallFiles(ckpt, plan, state.dir);
  await state.markComplete();
  emit({ kind: "done", command: "fp8-to-bf16", seconds: (performance.now() - started) / 1000 });
  return summary;
}

async function writeSmallFiles(ckpt: Checkpoint, plan: Fp8ToBf16Plan, out: string): Promise<void> {
  const totalSize = plan.shards.reduce((a, s) => a + s.tensors.reduce((b, t) => b + numel(t.shape) * DTYPE_SIZE[t.dtype as Dtype], 0), 0);
  await writeFileAtomic(join(out, INDEX_FILE), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: plan.weightMap }, null, 2) + "\n");
  if (plan.config) await writeFileAtomic(join(out, "config.json"), JSON.stringify(plan.config, null, 2) + "\n");
  for (const name of plan.copyFiles) await copyFileAtomic(await ckpt.source.localPath(name), join(out, name));
}
