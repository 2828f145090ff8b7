/**
 * `deepcast fp8-to-bf16`: FP8 e4m3 weights with 128x128 `weight_scale_inv` blocks -> BF16, with the
 * semantics of DeepSeek's `fp8_cast_bf16.py` (bf16(f32(fp8) * scale_inv), one RNE rounding), shard by
 * shard under the input's file names, the index and config rewritten, small files copied.
 */
import { join } from "node:path";
import { DeepcastError } from "../errors.js";
import { progressMeter, type OnEvent } from "../events.js";
import type { PlanDescription } from "../io/dry-run.js";
import { checkpointIdentity, locate, INDEX_FILE, type Checkpoint, type TensorLocation } from "../io/checkpoint.js";
import { DTYPE_SIZE, numel, safetensorsOrder, type Dtype } from "../io/dtypes.js";
import { SafetensorsWriter, safetensorsFileSize, type TensorSpec } from "../io/safetensors.js";
import { scaleNameOf, weightOfScale } from "../formats/fp8.js";
import type { Kernels } from "../quant/kernels.js";
import { ShardReader } from "../io/shard-reader.js";
import { DEFAULT_CHUNK_BYTES, fp8ToBf16Chunks, pump, readFp8Scale, type Chunk } from "./pipeline.js";
import { checkFreeSpace, copyFileAtomic, freeBytes, writeFileAtomic } from "../io/write.js";
import { fmtBytes } from "../units.js";
import { fingerprint, RunState } from "./run-state.js";


export type OutTensor = TensorSpec &
  ({ op: "copy"; from: TensorLocation } | { op: "fp8"; from: TensorLocation; scale: TensorLocation });

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
  /** config.json with quantization_config removed and torch_dtype bfloat16 (null: none in input). */
  config: Record<string, unknown> | null;
  /** Other top-level files copied as they are (tokenizer, generation config, ...). */
  copyFiles: string[];
  fp8Tensors: number;
  droppedScales: number;
  inputBytes: number;
  outputBytes: number;
}

const isScaleName = (name: string) => weightOfScale(name) !== null;

export function planFp8ToBf16(ckpt: Checkpoint): Fp8ToBf16Plan {
  const where = (f: string) => `${ckpt.source.description}/${f}`;
  const shards: ShardPlan[] = [];
  let fp8Tensors = 0;
  let droppedScales = 0;
  let inputBytes = 0;
  for (const name of ckpt.shards) {
    const header = ckpt.headers.get(name)!;
    const tensors: OutTensor[] = [];
    for (const entry of header.tensors) {
      inputBytes += entry.end - entry.begin;
      if (isScaleName(entry.name)) {
        droppedScales++;
        continue;
      }
      const from = { file: name, entry };
      if (entry.dtype === "F8_E4M3") {
        // loadCheckpoint checked that the scale is there, F32 and of the right grid.
        const scale = locate(ckpt, scaleNameOf(entry.name))!;
        tensors.push({ name: entry.name, dtype: "BF16", shape: entry.shape, op: "fp8", from, scale });
        fp8Tensors++;
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

  let config: Record<string, unknown> | null = null;
  if (ckpt.config) {
    config = { ...ckpt.config };
    delete config.quantization_config;
    config.torch_dtype = "bfloat16";
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
    fp8Tensors,
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
    // An empty tensor still gets one (empty) chunk, so the writer sees it.
    let off = 0;
    do {
      const length = Math.min(chunkBytes, size - off);
      chunks.push({ tensor: t.name, src: { file: t.from.file, tensor: t.name, offset: off, length }, outBytes: length });
      off += length;
    } while (off < size);
    return chunks;
  }
  const [rows, cols] = t.shape as [number, number];
  return fp8ToBf16Chunks({ tensor: t.name, file: t.from.file, where: `${where}/${t.from.file}`, allowNonFinite, rows, cols, scale: () => scales.get(t.name)!, kernels: k, threads, chunkBytes });
}

/** The --dry-run description of a plan. */
export function describeFp8ToBf16(plan: Fp8ToBf16Plan, input: string, out: string): PlanDescription {
  const shards = plan.shards.map((s) => ({ file: s.name, tensors: s.tensors.length, bytes: s.bytes }));
  const files = [INDEX_FILE, ...(plan.config ? ["config.json"] : []), ...plan.copyFiles];
  return {
    command: "fp8-to-bf16",
    input,
    output: out,
    fields: { shards, files, fp8Tensors: plan.fp8Tensors, droppedScales: plan.droppedScales },
    lines: [
      ...shards.map((s) => `${s.file}  ${s.tensors} tensors  ${fmtBytes(s.bytes)}`),
      `files: ${files.join(", ")}`,
      `${plan.fp8Tensors} FP8 tensors dequantized, ${plan.droppedScales} scales dropped`,
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
  return fingerprint({ command: "fp8-to-bf16", format: 1, inputs: await checkpointIdentity(ckpt), outputs: plan.shards.map((s) => [s.name, s.bytes]) });
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
        scales.set(t.name, await readFp8Scale(reader, { file: t.scale.file, name: t.scale.entry.name }, t.shape[1]!, where, opts.allowNonFinite ?? false));
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
        summary.fp8Tensors += s.tensors.filter((t) => t.op === "fp8").length;
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
