/**
 * The resumable write loop behind `to-gguf`, whatever the input (a safetensors checkpoint, a GGUF):
 * the planned layout is written tensor by tensor through the streaming pipeline, under a run record
 * (./run-state.ts) that lets a rerun keep completed split files and the synced prefix of the file
 * being written. Each input says only how a tensor's chunks are made.
 */
import { basename, dirname } from "node:path";
import { progressMeter, type OnEvent } from "../events.js";
import type { GgmlType } from "../formats/ggml-types.js";
import type { GgufLayout } from "../io/gguf-layout.js";
import { GgufWriter } from "../io/gguf-writer.js";
import { pump, PumpSlots, type Chunk, type RangeReader } from "./pipeline.js";
import { fingerprint, RunState } from "./run-state.js";

export interface ToGgufSummary {
  files: string[];
  tensors: number;
  bytesRead: number;
  /** Bytes of the files written by this run. */
  bytesWritten: number;
  /** Split files already complete from an interrupted run, kept as they were. */
  resumedFiles: number;
  /** Tensors (in all files) kept from an interrupted run, complete files included. */
  resumedTensors: number;
}

/**
 * How much output is written between syncs that an interrupted run can resume from. The syncs run
 * while conversion goes on, so the disk writes as the run proceeds and the last sync waits for at most
 * about this much.
 */
export const CHECKPOINT_BYTES = 512e6;

/** Chunks of one output tensor, after something small is read first (an expert's FP4 scales, MTP's h_proj). */
export interface ChunkGroup {
  prepare?: () => Promise<void>;
  chunks: Chunk[];
}

export interface GgufRunJob {
  layout: GgufLayout;
  /** Output tensors in the order they are produced. */
  tensors: readonly { name: string; type: GgmlType }[];
  /** What makes two runs the same run (input identity, options): a rerun resumes only when it is equal. */
  identity: Record<string, unknown>;
  /** The input folder: the output may not lie inside it (absent: the input checks this itself). */
  inputDir?: string;
  reader: RangeReader & { close(): Promise<void> };
  /** The chunks that produce tensor i, in order, in groups (may first read small things, e.g. FP8 scales). */
  groups(i: number): Promise<ChunkGroup[]>;
  /** Refuses to start when `bytes` more do not fit in `dir`. */
  checkSpace(dir: string, bytes: number): Promise<void>;
}

export interface GgufRunOptions {
  force: boolean;
  skipSpaceCheck?: boolean;
  /** Progress: start, bytes (per chunk), tensor (each tensor written), done. */
  onEvent?: OnEvent;
  /** Output bytes between resumable checkpoints (default CHECKPOINT_BYTES). */
  checkpointBytes?: number;
}

/** Writes a job's layout; the reader is closed at the end, whether the run succeeds or not. */
export async function runGgufJob(job: GgufRunJob, opts: GgufRunOptions): Promise<ToGgufSummary> {
  const { layout } = job;
  const emit: OnEvent = opts.onEvent ?? (() => undefined);
  const started = performance.now();
  const dir = dirname(layout.files[0]!.path);
  const names = layout.files.map((f) => basename(f.path));
  let state: RunState;
  try {
    state = await RunState.open(dir, {
      command: "to-gguf",
      fingerprint: fingerprint({
        command: "to-gguf", format: 1, ...job.identity,
        layout: layout.files.map((f) => [basename(f.path), f.fileSize, f.tensors.map((t) => [t.name, t.type.name])]),
      }),
      force: opts.force,
      ...(job.inputDir !== undefined ? { inputDir: job.inputDir } : {}),
      outputs: names,
    });
  } catch (e) {
    await job.reader.close();
    throw e;
  }
  try {
    const summary: ToGgufSummary = { files: layout.files.map((f) => f.path), tensors: layout.tensorCount, bytesRead: 0, bytesWritten: 0, resumedFiles: 0, resumedTensors: 0 };
    // Split files completed by an earlier, interrupted run of the same command are kept.
    const skipFiles = new Set<number>();
    for (const [i, n] of names.entries()) if (await state.isDone(n)) skipFiles.add(i);
    summary.resumedFiles = skipFiles.size;
    const needed = layout.files.filter((f) => !skipFiles.has(f.index)).reduce((a, f) => a + f.fileSize, 0);
    if (!opts.skipSpaceCheck) await job.checkSpace(dir, needed);
    emit({ kind: "start", command: "to-gguf", total: layout.totalBytes, unit: "bytes" });
    const placedAt = new Map(layout.files.flatMap((f) => f.tensors.map((t, k) => [t.name, { placed: t, index: k }] as const)));
    // Inside the file being written, a synced prefix recorded in the manifest is kept as well.
    const p = state.manifest.progress;
    const resumeAt = p && Number.isSafeInteger(p.file) && Number.isSafeInteger(p.tensor) ? { file: p.file!, tensor: p.tensor! } : undefined;
    // Checkpoint syncs in flight, in order, each recording its position once its bytes are on disk.
    let syncing: Promise<void> = Promise.resolve();
    const writer = await GgufWriter.create(layout, {
      skipFiles,
      ...(resumeAt ? { resumeAt } : {}),
      onFileDone: async (path) => {
        await syncing;
        await state.markDone(basename(path));
        summary.bytesWritten += layout.files.find((f) => f.path === path)!.fileSize;
      },
    });
    const start = writer.position;
    summary.resumedTensors = layout.files.slice(0, start.file).reduce((a, f) => a + f.tensors.length, 0) + start.tensor;
    // progress counts tensor data; what an interrupted run already wrote counts as resumed
    const kept = (placed: { file: number }, index: number) => skipFiles.has(placed.file) || placed.file < start.file || (placed.file === start.file && index < start.tensor);
    const placements = [...placedAt.values()];
    const meter = progressMeter(emit, "to-gguf", "bytes", placements.reduce((a, q) => a + q.placed.nbytes, 0),
      placements.reduce((a, q) => a + (kept(q.placed, q.index) ? q.placed.nbytes : 0), 0));
    let sinceCheckpoint = 0;
    const buffers = new PumpSlots();
    try {
      for (const [i, t] of job.tensors.entries()) {
        const { placed, index } = placedAt.get(t.name)!;
        if (kept(placed, index)) continue;
        for (const g of await job.groups(i)) {
          await g.prepare?.();
          await pump(g.chunks, job.reader, writer, (inB, outB) => {
            summary.bytesRead += inB;
            emit({ kind: "bytes", inBytes: inB, outBytes: outB });
            meter.add(outB);
          }, buffers);
        }
        emit({ kind: "tensor", tensor: t.name, index: i, count: job.tensors.length, type: t.type.name, bytes: placed.nbytes });
        sinceCheckpoint += placed.nbytes;
        if (sinceCheckpoint >= (opts.checkpointBytes ?? CHECKPOINT_BYTES)) {
          sinceCheckpoint = 0;
          const c = await writer.beginCheckpoint();
          syncing = Promise.all([syncing, c.synced]).then(() => state.setProgress({ ...c.position }));
          syncing.catch(() => undefined); // awaited (and reported) at the next file end, the end, or on error
        }
      }
      await syncing;
      await writer.commit();
    } catch (e) {
      // What a finished sync recorded stays valid; the writer then keeps a resumable temporary.
      await syncing.catch(() => undefined);
      await writer.abort();
      throw e;
    }
    await state.markComplete();
    emit({ kind: "done", command: "to-gguf", seconds: (performance.now() - started) / 1000 });
    return summary;
  } finally {
    await job.reader.close();
    await state.close();
  }
}
