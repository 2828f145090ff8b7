/**
 * `deepcast to-demo`: an HF DeepSeek-V3/V3.2/V4 checkpoint -> the model-parallel shards of DeepSeek's
 * inference demo (`model{i}-mp{N}.safetensors`, what `inference/convert.py` writes), streamed. Planned
 * by ./demo-plan.ts (V3, V3.2) or ./demo-plan-v4.ts (V4); this runner is the same for both.
 *
 * Every input tensor is read once, in input order (shards by name, tensors in data order), and its
 * bytes are scattered to all N rank files at offsets planned from the headers: each rank file is
 * created with its header and final size up front (tensors in the safetensors library's order, as
 * convert.py's save_file lays them out) and filled by positional writes. Memory is a few chunks.
 *
 * Resume: after each input shard the rank files are synced (while the next shard proceeds) and the
 * number of input shards done is recorded beside the run manifest; a rerun reopens the temporary
 * files and continues after the last recorded shard. Finished files are renamed into place only when
 * every byte is there.
 */
import { join } from "node:path";
import { DeepcastError } from "../errors.js";
import { progressMeter, type OnEvent, type ProgressMeter } from "../events.js";
import type { PlanDescription } from "../io/dry-run.js";
import { checkpointIdentity, type Checkpoint } from "../io/checkpoint.js";
import { tensorBytes } from "../io/dtypes.js";
import { PositionalSafetensorsWriter } from "../io/positional-writer.js";
import { checkFp8ScaleValues, fp8NanError, type Kernels } from "../quant/kernels.js";
import { SCALE_SUFFIX } from "../formats/fp8.js";
import { checkE8m0 } from "../formats/e8m0.js";
import { checkFreeSpace, copyFileAtomic, freeBytes, writeFileAtomic } from "../io/write.js";
import { fmtBytes } from "../units.js";
import type { DemoInput, DemoPlan } from "./demo-plan.js";
import { ShardReader } from "../io/shard-reader.js";
import { DEFAULT_CHUNK_BYTES, fp8ToBf16Chunks, pump, readE8m0Scale, readFp8Scale, type Chunk, type ChunkSink } from "./pipeline.js";
import { fp4TileScaleChunk, fp4ToFp8Chunks } from "./fp4-chunks.js";
import { fingerprint, RunState } from "./run-state.js";

export * from "./demo-plan.js";
export { demoModelArgsV4, planToDemoV4, type DemoPlanV4Options } from "./demo-plan-v4.js";

/** Beside the run manifest: how many input shards the temporary rank files hold, durably. */

/** The --dry-run description of a plan. */
export function describeToDemo(plan: DemoPlan, input: string, out: string): PlanDescription {
  const ranks = plan.ranks.map((r) => ({ file: r.name, tensors: r.tensors.length, bytes: r.bytes }));
  const files = ["config.json", ...plan.copyFiles];
  return {
    command: "to-demo",
    input,
    output: out,
    fields: {
      modelParallel: plan.mp,
      nExperts: plan.nExperts,
      dtype: plan.dtype,
      ...(plan.expertDtype ? { expertDtype: plan.expertDtype, fp4CastToFp8: plan.fp4CastToFp8 ?? 0 } : {}),
      ranks,
      files,
      config: plan.modelArgs,
      inputTensors: plan.inputs.length,
      skippedMtpTensors: plan.skippedMtp,
      fp8Dequantized: plan.fp8Dequantized,
      droppedScales: plan.droppedScales,
    },
    lines: [
      ...ranks.map((r) => `${r.file}  ${r.tensors} tensors  ${fmtBytes(r.bytes)}`),
      `files: ${files.join(", ")}`,
      `${plan.inputs.length} input tensors read once; ${plan.skippedMtp} MTP tensors skipped` +
        (plan.dtype === "bf16" || plan.expertDtype ? `; ${plan.fp8Dequantized} FP8 tensors dequantized, ${plan.droppedScales} scales dropped` : "") +
        (plan.expertDtype === "fp8" ? `; ${plan.fp4CastToFp8 ?? 0} FP4 expert weights cast to FP8` : plan.expertDtype === "fp4" ? "; FP4 experts written as F4" : ""),
      `demo config: dtype ${String(plan.modelArgs.dtype)}, max_seq_len ${plan.modelArgs.max_seq_len === undefined ? "not set (the demo's default)" : String(plan.modelArgs.max_seq_len)}`,
    ],
    inputBytes: plan.inputBytes,
    outputBytes: plan.outputBytes,
  };
}

export interface ToDemoRunOptions {
  out: string;
  kernels: Kernels;
  threads: number;
  force: boolean;
  chunkBytes?: number;
  skipSpaceCheck?: boolean;
  /** Keep FP8 NaN codes and non-finite or absurd scales instead of failing (--dtype bf16). */
  allowNonFinite?: boolean;
  /** Progress: start, bytes (written to the rank files, all ranks together), shard (once per input shard), done. */
  onEvent?: OnEvent;
}

export interface ToDemoSummary {
  ranks: number;
  files: string[];
  /** Rank files that were already complete. */
  resumedFiles: number;
  /** Input shards skipped because an interrupted run had written them durably. */
  resumedShards: number;
  /** Tensors written into rank files by this run. */
  tensors: number;
  fp8Dequantized: number;
  /** V4 --expert-dtype fp8: FP4 expert weights cast to FP8 by this run. */
  fp4CastToFp8: number;
  /** Tensor bytes read from the input (scales included). */
  bytesRead: number;
  /** Bytes of the rank files written by this run. */
  bytesWritten: number;
}

/** Options that change the output; threads and chunk size may differ on resume. */
export async function demoPlanFingerprint(ckpt: Checkpoint, plan: DemoPlan): Promise<string> {
  return fingerprint({
    command: "to-demo",
    format: 1,
    inputs: await checkpointIdentity(ckpt),
    options: { mp: plan.mp, nExperts: plan.nExperts, dtype: plan.dtype, ...(plan.expertDtype ? { expertDtype: plan.expertDtype } : {}) },
    outputs: plan.ranks.map((r) => [r.name, r.bytes]),
    modelArgs: plan.modelArgs,
  });
}

/** Ranks that receive (some of) an input tensor. */
function targetRanks(t: DemoInput, mp: number): number[] {
  return t.place.kind === "rank" ? [t.place.rank] : Array.from({ length: mp }, (_, i) => i);
}

/**
 * Chunks that read one input tensor, each at most `chunkBytes` of input: FP8 to dequantize in whole
 * 128-row blocks (each chunk's scales are one contiguous slice), packed FP4 to cast to FP8 in whole
 * 128-row tiles, tensors split along a dim >= 1 or checked on the way in whole rows (so the columns of
 * every rank can be gathered, and an error names its row), anything else in plain byte ranges.
 */
function inputChunks(t: DemoInput, k: Kernels, threads: number, chunkBytes: number, scales: Map<string, Float32Array>, where: string, allowNonFinite: boolean): Chunk[] {
  const size = t.from.entry.end - t.from.entry.begin;
  if (size === 0) return [];
  const [rows, cols] = t.shape as [number, number];
  switch (t.op) {
    case "fp8":
      return fp8ToBf16Chunks({ tensor: t.hfName, file: t.from.file, where: `${where}/${t.from.file}`, allowNonFinite, rows, cols, scale: () => scales.get(t.hfName)!, kernels: k, threads, chunkBytes });
    case "fp4-fp8":
      return fp4ToFp8Chunks({
        tensor: t.hfName, weight: { file: t.from.file, name: t.hfName }, scale: { file: t.scale!.file, name: t.scale!.entry.name },
        rows, cols, where, allowNonFinite, kernels: k, threads, chunkBytes, instead: FP4_INSTEAD,
      });
    case "fp4-fp8-scale":
      return [fp4TileScaleChunk({
        tensor: t.hfName, weight: { file: "", name: "" }, scale: { file: t.from.file, name: t.hfName },
        rows: t.fp4Weight!.rows, cols: t.fp4Weight!.cols, where, allowNonFinite, instead: FP4_INSTEAD,
      })];
    case "copy":
      break;
  }
  const chunks: Chunk[] = [];
  const src = (offset: number, length: number) => ({ file: t.from.file, tensor: t.hfName, offset, length });
  const checked = !allowNonFinite && keptDataCheck(t, 0, { file: "", tensor: "" }) !== undefined;
  const rowBytes = size / Math.max(1, t.from.entry.shape[0] ?? 1);
  const step = (t.place.kind === "split" && t.place.dim > 0) || checked
    ? Math.max(1, Math.floor(chunkBytes / rowBytes)) * rowBytes
    : chunkBytes;
  for (let off = 0; off < size; off += step) {
    const length = Math.min(step, size - off);
    const check = allowNonFinite ? undefined : keptDataCheck(t, off, { file: `${where}/${t.from.file}`, tensor: t.hfName });
    chunks.push({ tensor: t.hfName, src: src(off, length), outBytes: length, ...(check ? { convert: check } : {}) });
  }
  return chunks;
}

/** What to do instead when V4's FP4 -> FP8 expert cast would round. */
const FP4_INSTEAD = "write the experts as FP4 instead (without --expert-dtype fp8)";

/**
 * Tensors copied as stored are still checked (chunks starting `offset` bytes in, at whole rows): FP8
 * weights for NaN codes, V3's F32 scales for non-finite or absurd values, as the dequantizing paths
 * do, and V4's E8M0 scales for the NaN byte 255.
 */
function keptDataCheck(t: DemoInput, offset: number, where: { file: string; tensor: string }): Chunk["convert"] {
  const cols = t.from.entry.shape[1] ?? 1;
  if (t.from.entry.dtype === "F8_E4M3") {
    return (input, out) => {
      let nan = 0;
      for (let i = 0; i < input.length; i++) if ((input[i]! & 0x7f) === 0x7f) nan++;
      if (nan > 0) throw fp8NanError(nan, input, Math.floor(offset / cols), cols, where);
      out.set(input);
    };
  }
  if (t.from.entry.dtype === "F32" && t.from.entry.name.endsWith(SCALE_SUFFIX)) {
    return (input, out) => {
      checkFp8ScaleValues(new Float32Array(input.slice().buffer), cols, where);
      out.set(input);
    };
  }
  if (t.from.entry.dtype === "F8_E8M0") {
    return (input, out) => {
      checkE8m0(input, cols, where, 254, Math.floor(offset / cols));
      out.set(input);
    };
  }
  return undefined;
}

/** Receives each input tensor's (converted) bytes in order and writes every rank's part of them. */
class RankScatter implements ChunkSink {
  private readonly cursor = new Map<string, number>();
  private scratch: Uint8Array[] = [];

  constructor(
    private readonly byHf: Map<string, DemoInput>,
    private readonly writers: (PositionalSafetensorsWriter | null)[],
    private readonly onBytes: (n: number) => void,
  ) {}

  async append(hfName: string, data: Uint8Array): Promise<void> {
    const t = this.byHf.get(hfName)!;
    const pos = this.cursor.get(hfName) ?? 0;
    this.cursor.set(hfName, pos + data.length);
    const mp = this.writers.length;
    const writes: Promise<void>[] = [];
    const put = (rank: number, offset: number, bytes: Uint8Array) => {
      const w = this.writers[rank];
      if (!w || bytes.length === 0) return;
      writes.push(w.write(t.name, offset, bytes).then(() => this.onBytes(bytes.length)));
    };
    const p = t.place;
    if (p.kind === "replicate") {
      for (let r = 0; r < mp; r++) put(r, pos, data);
    } else if (p.kind === "rank") {
      put(p.rank, pos, data);
    } else {
      const inner = tensorBytes(t.dtype, t.shape.slice(p.dim + 1));
      const part = (t.shape[p.dim]! / mp) * inner;
      if (p.dim === 0) {
        // Rank r owns the contiguous bytes [r*part, (r+1)*part).
        const end = pos + data.length;
        for (let r = Math.floor(pos / part); r < mp && r * part < end; r++) {
          const lo = Math.max(pos, r * part);
          const hi = Math.min(end, (r + 1) * part);
          put(r, lo - r * part, data.subarray(lo - pos, hi - pos));
        }
      } else {
        // Whole rows of the dims before `dim`: rank r gets columns [r*part, (r+1)*part) of each.
        const row = part * mp;
        const rows = data.length / row;
        const firstRow = pos / row;
        for (let r = 0; r < mp; r++) {
          if (!this.writers[r]) continue;
          if ((this.scratch[r]?.length ?? 0) < rows * part) this.scratch[r] = new Uint8Array(rows * part);
          const buf = this.scratch[r]!.subarray(0, rows * part);
          for (let i = 0; i < rows; i++) buf.set(data.subarray(i * row + r * part, i * row + (r + 1) * part), i * part);
          put(r, firstRow * part, buf);
        }
      }
    }
    await Promise.all(writes);
  }
}

/** Records how many input shards the temporary rank files hold (in the run manifest). */
async function recordProgress(state: RunState, shardsDone: number): Promise<void> {
  await state.setProgress({ shardsDone });
}

export async function runToDemo(ckpt: Checkpoint, plan: DemoPlan, opts: ToDemoRunOptions): Promise<ToDemoSummary> {
  const emit: OnEvent = opts.onEvent ?? (() => undefined);
  const started = performance.now();
  const fp = await demoPlanFingerprint(ckpt, plan);
  const state = await RunState.open(opts.out, {
    command: "to-demo", fingerprint: fp, force: opts.force, inputDir: ckpt.source.description,
    files: [...plan.ranks.map((r) => r.name), "config.json", ...plan.copyFiles],
  });
  try {
    return await runOpened(ckpt, plan, opts, state, fp, emit, started);
  } finally {
    await state.close();
  }
}

async function runOpened(ckpt: Checkpoint, plan: DemoPlan, opts: ToDemoRunOptions, state: RunState, fp: string, emit: OnEvent, started: number): Promise<ToDemoSummary> {
  const dir = state.dir;
  const mp = plan.mp;
  const summary: ToDemoSummary = {
    ranks: mp, files: plan.ranks.map((r) => r.name), resumedFiles: 0, resumedShards: 0, tensors: 0,
    fp8Dequantized: 0, fp4CastToFp8: 0, bytesRead: 0, bytesWritten: 0,
  };
  const pendingRank: boolean[] = [];
  for (const r of plan.ranks) {
    const done = await state.isDone(r.name);
    pendingRank.push(!done);
    if (done) summary.resumedFiles++;
  }

  if (pendingRank.some(Boolean)) {
    // Every output counts: the rank files still to write, the config and the copied files.
    const small = ckpt.files.filter((f) => plan.copyFiles.includes(f.name) || f.name === "config.json").reduce((a, f) => a + f.size, 0);
    const needed = plan.ranks.filter((r) => pendingRank[r.rank]).reduce((a, r) => a + r.bytes, 0) + small;
    if (!opts.skipSpaceCheck) await checkFreeSpace(dir, needed, ckpt.source, ckpt.shards);
    emit({ kind: "start", command: "to-demo", total: plan.outputBytes, unit: "bytes" });
    const meter = progressMeter(emit, "to-demo", "bytes", plan.outputBytes, plan.ranks.filter((r) => !pendingRank[r.rank]).reduce((a, r) => a + r.bytes, 0));
    await writeRanks(ckpt, plan, emit, meter, opts, state, fp, pendingRank, summary);
    meter.set(plan.outputBytes); // the rank files' headers
  } else {
    emit({ kind: "start", command: "to-demo", total: plan.outputBytes, unit: "bytes" });
    emit({ kind: "bytes", inBytes: 0, outBytes: plan.outputBytes });
    progressMeter(emit, "to-demo", "bytes", plan.outputBytes, plan.outputBytes);
  }
  await writeSmallFiles(ckpt, plan, dir);
  await state.markComplete();
  emit({ kind: "done", command: "to-demo", seconds: (performance.now() - started) / 1000 });
  return summary;
}

async function writeRanks(
  ckpt: Checkpoint, plan: DemoPlan, emit: OnEvent, meter: ProgressMeter, opts: ToDemoRunOptions, state: RunState, fp: string, pendingRank: boolean[], summary: ToDemoSummary,
): Promise<void> {
  const dir = state.dir;
  const mp = plan.mp;
  const writers: (PositionalSafetensorsWriter | null)[] = Array.from({ length: mp }, () => null);

  // Continue an interrupted run when every unfinished rank file can be reopened as planned.
  let startShard = 0;
  const shardsDone = state.resumed ? state.manifest.progress?.shardsDone ?? 0 : 0;
  if (Number.isSafeInteger(shardsDone) && shardsDone > 0) {
    let all = true;
    for (const r of plan.ranks) {
      if (!pendingRank[r.rank]) continue;
      writers[r.rank] = await PositionalSafetensorsWriter.reopen(join(dir, r.name), r.tensors, null);
      if (!writers[r.rank]) all = false;
    }
    if (all) startShard = Math.min(shardsDone, ckpt.shards.length);
    else for (const [i, w] of writers.entries()) { await w?.close(); writers[i] = null; }
  }
  if (startShard === 0) {
    await recordProgress(state, 0);
    try {
      for (const r of plan.ranks) if (pendingRank[r.rank]) writers[r.rank] = await PositionalSafetensorsWriter.create(join(dir, r.name), r.tensors, null);
    } catch (e) {
      for (const w of writers) await w?.abort();
      throw e;
    }
  } else {
    for (const t of plan.inputs) {
      if (t.shardIndex >= startShard) continue;
      for (const r of targetRanks(t, mp)) writers[r]?.markWritten(t.name);
    }
  }

  const byHf = new Map(plan.inputs.map((t) => [t.hfName, t]));
  const byShard: DemoInput[][] = ckpt.shards.map(() => []);
  for (const t of plan.inputs) byShard[t.shardIndex]!.push(t);
  const rankBytes = (t: DemoInput) => tensorBytes(t.dtype, t.shape) / (t.place.kind === "split" ? mp : 1);
  const needed = (t: DemoInput) => targetRanks(t, mp).some((r) => writers[r] !== null);
  let recorded = startShard;
  const sink = new RankScatter(byHf, writers, (n) => {
    summary.bytesWritten += n;
    emit({ kind: "bytes", inBytes: 0, outBytes: n });
    meter.add(n);
  });
  const reader = new ShardReader(ckpt.source);
  const chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  // Syncing gigabytes at every shard boundary would stall the pipeline: the rank files are synced
  // while the next shard is processed, and the shard count is recorded once the sync is done.
  let checkpoint: Promise<void> = Promise.resolve();
  try {
    for (const [k, shard] of ckpt.shards.entries()) {
      const inShard = byShard[k]!.filter(needed);
      const shardOut = inShard.reduce((a, t) => a + targetRanks(t, mp).filter((r) => writers[r]).length * rankBytes(t), 0);
      if (k < startShard) {
        summary.resumedShards++;
        emit({ kind: "bytes", inBytes: 0, outBytes: shardOut });
        meter.skip(shardOut);
        emit({ kind: "shard", shard, index: k, count: ckpt.shards.length, skipped: true, bytes: shardOut, seconds: 0 });
        continue;
      }
      const t0 = performance.now();
      const scales = new Map<string, Float32Array>();
      for (const t of inShard) {
        if (t.op !== "fp8") continue;
        const read = t.scaleKind === "e8m0" ? readE8m0Scale : readFp8Scale;
        const values = await read(reader, { file: t.scale!.file, name: t.scale!.entry.name }, t.from.entry.shape[1]!,
          `${ckpt.source.description}/${t.scale!.file}`, opts.allowNonFinite ?? false);
        summary.bytesRead += t.scale!.entry.end - t.scale!.entry.begin;
        scales.set(t.hfName, values);
      }
      const chunks = inShard.flatMap((t) => inputChunks(t, opts.kernels, opts.threads, chunkBytes, scales, ckpt.source.description, opts.allowNonFinite ?? false));
      await pump(chunks, reader, sink, (inB) => { summary.bytesRead += inB; });
      summary.fp8Dequantized += inShard.filter((t) => t.op === "fp8").length;
      summary.fp4CastToFp8 += inShard.filter((t) => t.op === "fp4-fp8").length;
      summary.tensors += inShard.reduce((a, t) => a + targetRanks(t, mp).filter((r) => writers[r]).length, 0);
      emit({ kind: "shard", shard, index: k, count: ckpt.shards.length, skipped: false, bytes: shardOut, seconds: (performance.now() - t0) / 1000 });
      const syncs = Promise.all(writers.map((w) => w?.sync()));
      syncs.catch(() => undefined);
      const prev = checkpoint;
      checkpoint = (async () => {
        await prev;
        await syncs;
        await recordProgress(state, k + 1);
        recorded = k + 1;
      })();
      checkpoint.catch(() => undefined);
    }
    await checkpoint;
    for (const r of plan.ranks) {
      const w = writers[r.rank];
      if (!w) continue;
      await w.commit();
      writers[r.rank] = null;
      await state.markDone(r.name);
    }
  } catch (e) {
    await checkpoint.catch(() => undefined);
    // Keep the temporary files when a rerun can continue from them; otherwise remove them.
    for (const w of writers) {
      if (!w) continue;
      if (recorded > 0) await w.close().catch(() => undefined);
      else await w.abort();
    }
    throw e;
  } finally {
    await reader.close();
  }
}

async function writeSmallFiles(ckpt: Checkpoint, plan: DemoPlan, out: string): Promise<void> {
  await writeFileAtomic(join(out, "config.json"), JSON.stringify(plan.modelArgs, null, 4) + "\n");
  for (const name of plan.copyFiles) await copyFileAtomic(await ckpt.source.localPath(name), join(out, name));
}
