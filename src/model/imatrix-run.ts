/**
 * `deepcast imatrix`: llama-imatrix's importance matrix from the layer-streamed forward pass.
 *
 * The text is cut as llama-imatrix (and llama-perplexity) cut it: tokens = [BOS] + text ids (when
 * the tokenizer adds BOS), at least 2·ctx of them, chunk k = tokens[k·ctx, (k+1)·ctx) with its first
 * token replaced by BOS, min(--chunks, floor(tokens/ctx)) chunks. Chunks go through the forward pass
 * in batches: each batch reads every weight once (all chunks in one batch when they fit the memory
 * budget), and an ImatrixCollector adds up the inputs of every weight matrix. Like llama-imatrix,
 * the perplexity of positions ctx/2 … ctx−2 of each chunk is computed on the way (the head is
 * streamed in row blocks, so no batch's logits are ever whole), unless `ppl` is false.
 */
import { DeepcastError } from "../errors.js";
import { progressMeter, type OnEvent } from "../events.js";
import { forward, headName, type ForwardOptions } from "./forward.js";
import { forwardBytesPerToken, forwardWeightBytes } from "./forward-memory.js";
import { ImatrixCollector } from "./imatrix-collect.js";
import { isMoeLayer, type ModelConfig } from "./config.js";
import { forwardOps, type ForwardOps, type StoredMatrix } from "./ops.js";
import { loadNative } from "../quant/native.js";
import { Scratch } from "./scratch.js";
import { planProtocol, type EvalSequence } from "./eval-protocol.js";
import type { WeightSource } from "./weights.js";

export interface ImatrixChunkPlan {
  ctx: number;
  sequences: EvalSequence[];
  /** Chunks the text holds before --chunks. */
  available: number;
  /** Tokens after tokenization (with BOS when added). */
  tokens: number;
}

/** Cuts the text's ids (no BOS) into llama-imatrix's chunks. */
export function planImatrixChunks(textIds: readonly number[], opts: { ctx: number; chunks?: number; bos: number | null; addBos: boolean; file?: string }): ImatrixChunkPlan {
  const { ctx } = opts;
  if (!Number.isInteger(ctx) || ctx < 4) throw new DeepcastError(`--ctx must be an integer of at least 4, got ${ctx}`, { code: "USAGE" });
  const tokens = textIds.length + (opts.addBos && opts.bos !== null ? 1 : 0);
  if (tokens < 2 * ctx) {
    throw new DeepcastError(`the text tokenizes to only ${tokens} tokens; llama-imatrix needs at least ${2 * ctx} (2 chunks) for a context of ${ctx}: use a longer text or a smaller --ctx`,
      { file: opts.file, code: "INVALID_INPUT" });
  }
  const plan = planProtocol(textIds, { protocol: "llama", ctx, chunks: opts.chunks, bos: opts.bos, addBos: opts.addBos });
  return { ctx, sequences: plan.sequences, available: plan.available, tokens: plan.tokens };
}

/** Bytes of the collected statistics (float64 sums and counts), from the config. */
export function imatrixStatsBytes(cfg: ModelConfig, processOutput = false): number {
  const H = cfg.nHeads;
  let values = processOutput ? cfg.dim : 0;
  for (let l = 0; l < cfg.nLayers; l++) {
    values += 2 * cfg.dim + cfg.qLoraRank + H * cfg.qkNopeHeadDim + H * cfg.kvLoraRank + H * cfg.vHeadDim;
    if (cfg.indexer) values += cfg.qLoraRank + 2 * cfg.dim;
    values += isMoeLayer(cfg, l)
      ? cfg.dim + cfg.nRoutedExperts * (2 * cfg.dim + cfg.moeInterDim + 1) + 2 * cfg.dim + cfg.nSharedExperts * cfg.moeInterDim
      : 2 * cfg.dim + cfg.interDim;
  }
  return 8 * values;
}

/** Node, the native kernels, tokenizer and buffers: what the process holds before any batch. */
export const BASE_BYTES = 256 * 2 ** 20;

export interface ImatrixMemoryPlan {
  budgetBytes: number;
  /** Weights held at once + statistics + base + per-sequence MLA scratch. */
  fixedBytes: number;
  /** Activations of one chunk. */
  perChunkBytes: number;
  chunksPerBatch: number;
  batches: number;
  /** fixed + chunksPerBatch · perChunk. */
  estimatedPeakBytes: number;
}

/** How many chunks one forward pass carries under `budgetBytes` (at least 1: then the budget is too small and says so). */
export function planImatrixMemory(cfg: ModelConfig, ctx: number, chunks: number, budgetBytes: number, opts: { processOutput?: boolean; ppl?: boolean } = {}): ImatrixMemoryPlan {
  const mlaScratch = 3 * 4 * ctx * cfg.nHeads * cfg.kvLoraRank;
  // the PPL's head block (streamedNll): float32 weights and logits of ~16 MB at most each
  const headBlock = opts.ppl === false ? 0 : Math.min(2 ** 24, 4 * cfg.vocabSize * cfg.dim) + 2 ** 24;
  const fixedBytes = BASE_BYTES + forwardWeightBytes(cfg) + imatrixStatsBytes(cfg, opts.processOutput) + mlaScratch + headBlock;
  // the PPL gathers the scored rows' hidden states and a block of their logits
  const perToken = forwardBytesPerToken(cfg) + (opts.ppl === false ? 0 : 4 * (cfg.dim + 128));
  const perChunkBytes = ctx * perToken;
  const fit = Math.floor((budgetBytes - fixedBytes) / perChunkBytes);
  const chunksPerBatch = Math.max(1, Math.min(chunks, fit));
  const batches = Math.ceil(chunks / chunksPerBatch);
  return { budgetBytes, fixedBytes, perChunkBytes, chunksPerBatch, batches, estimatedPeakBytes: fixedBytes + chunksPerBatch * perChunkBytes };
}

/** A WeightSource that counts how much of each tensor was read (in whole tensors). */
export class ReadCounter implements WeightSource {
  readonly reads = new Map<string, number>();
  get description(): string {
    return this.inner.description;
  }
  get config(): ModelConfig {
    return this.inner.config;
  }
  has(name: string): boolean {
    return this.inner.has(name);
  }
  shape(name: string): readonly number[] {
    return this.inner.shape(name);
  }
  readonly readStored?: (name: string, start?: number, count?: number) => Promise<StoredMatrix | null>;
  constructor(readonly inner: WeightSource) {
    // weights in their stored form when the source has it (the pass's matmuls take it as is: half
    // the memory of float32 for BF16, no conversion pass), counted like float32 reads
    if (inner.readStored) {
      const stored = inner.readStored.bind(inner);
      this.readStored = async (name, start, count) => {
        const m = await stored(name, start, count);
        if (m) this.count(name, m.rows * m.cols);
        return m;
      };
    }
  }
  async read(name: string, start?: number, count?: number): Promise<Float32Array> {
    const v = await this.inner.read(name, start, count);
    this.count(name, v.length);
    return v;
  }
  private count(name: string, values: number): void {
    const numel = this.inner.shape(name).reduce((a, b) => a * b, 1);
    this.reads.set(name, (this.reads.get(name) ?? 0) + values / numel);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  /** The most times any tensor was read whole. */
  maxReads(): number {
    let m = 0;
    for (const r of this.reads.values()) m = Math.max(m, r);
    return m;
  }
}

export interface ImatrixRunOptions {
  chunksPerBatch: number;
  threads?: number;
  ops?: ForwardOps;
  processOutput?: boolean;
  /** Compute the perplexity on the way, as llama-imatrix does (default true). */
  ppl?: boolean;
  /**
   * Progress (src/events.ts): start (chunks), progress (tokens, after every layer of every batch),
   * batch (chunks done, running perplexity with ppl), done.
   */
  onEvent?: OnEvent;
}

export interface ImatrixRunResult {
  collector: ImatrixCollector;
  chunks: number;
  chunkSize: number;
  /** llama-imatrix's chunk count (largest count / chunk size). */
  chunkCount: number;
  batches: number;
  tokens: number;
  ppl: number | null;
  seconds: number;
  /** The most times any weight was read whole (= batches). */
  weightReads: number;
}

export async function runImatrix(source: WeightSource, plan: ImatrixChunkPlan, opts: ImatrixRunOptions): Promise<ImatrixRunResult> {
  const src = new ReadCounter(source);
  const cfg = src.config;
  const collector = new ImatrixCollector(cfg, { processOutput: opts.processOutput });
  const ops = opts.ops ?? forwardOps();
  const threads = Math.max(1, opts.threads ?? 1);
  const per = Math.max(1, Math.floor(opts.chunksPerBatch));
  const seqs = plan.sequences;
  const batches = Math.ceil(seqs.length / per);
  const layers = cfg.nLayers + 1;
  const totalTokens = seqs.reduce((n, s) => n + s.input.length, 0);
  const started = performance.now();
  const wantPpl = opts.ppl !== false;
  let nll = 0;
  let scored = 0;
  let tokensDone = 0;

  const emit: OnEvent = opts.onEvent ?? (() => undefined);
  emit({ kind: "start", command: "imatrix", total: seqs.length, unit: "sequences" });
  const meter = progressMeter(emit, "imatrix", "tokens", totalTokens);

  for (let b = 0; b < batches; b++) {
    const batch = seqs.slice(b * per, (b + 1) * per);
    const batchTokens = batch.reduce((n, s) => n + s.input.length, 0);
    // one activation pool for the pass and the perplexity's head after it
    const scratch = new Scratch(2 * forwardBytesPerToken(cfg) * batchTokens);
    const fwd: ForwardOptions = {
      // DeepSeek-V4 as llama-imatrix runs it: no FP8/FP4 activation simulation (spec §4.4)
      threads, ops, observer: collector, output: "hidden", v4: { qat: false }, scratch,
      onLayer: (l) => {
        if (l < cfg.nLayers) meter.set(tokensDone + (batchTokens * (l + 1)) / layers);
      },
    };
    const r = await forward(src, batch.map((s) => s.input), fwd);
    if (wantPpl) {
      const rows: number[] = [];
      const targets: number[] = [];
      batch.forEach((s, k) => s.targets.forEach((t, i) => {
        rows.push(r.offsets[k]! + s.first + i);
        targets.push(t);
      }));
      nll += await streamedNll(src, ops, threads, r.hidden!, rows, targets, scratch);
      scored += rows.length;
    }
    tokensDone += batchTokens;
    meter.set(tokensDone);
    emit({
      kind: "batch", done: Math.min(seqs.length, (b + 1) * per), total: seqs.length, tokens: tokensDone, seconds: (performance.now() - started) / 1000,
      ...(wantPpl ? { ppl: Math.exp(nll / scored) } : {}),
    });
  }
  emit({ kind: "done", command: "imatrix", seconds: (performance.now() - started) / 1000 });
  const chunkSize = plan.ctx;
  return {
    collector,
    chunks: seqs.length,
    chunkSize,
    chunkCount: collector.chunkCount(chunkSize),
    batches,
    tokens: totalTokens,
    ppl: wantPpl ? Math.exp(nll / scored) : null,
    seconds: (performance.now() - started) / 1000,
    weightReads: src.maxReads(),
  };
}

/**
 * Σ −log softmax(h W_head^T)[target] over `rows` of `hidden`, with the head read once in row blocks:
 * a running max and Σ exp per row (float64), so only [rows × block] logits are ever held.
 */
async function streamedNll(src: WeightSource, ops: ForwardOps, threads: number, hidden: Float32Array, rows: readonly number[], targets: readonly number[],
                           scratch: Scratch): Promise<number> {
  const cfg = src.config;
  const dim = cfg.dim;
  const V = cfg.vocabSize;
  const name = headName(cfg, src);
  const M = rows.length;
  if (M === 0) return 0;
  const h = scratch.take(M * dim);
  rows.forEach((r, i) => h.set(hidden.subarray(r * dim, (r + 1) * dim), i * dim));
  // a block of vocabulary rows per read: its float32 weights and [M × block] logits of ~16 MB at most
  // each (the size of the pass's larger activations, whose buffers the pool then hands over)
  const block = Math.max(128, Math.min(V, Math.floor(2 ** 22 / M), Math.floor(2 ** 22 / dim)));
  const max = new Float64Array(M).fill(-Infinity);
  const sum = new Float64Array(M);
  const tgt = new Float64Array(M);
  const logits = scratch.take(M * block);
  const fold = logSumExpBlock();
  for (let r0 = 0; r0 < V; r0 += block) {
    const n = Math.min(block, V - r0);
    const w = await src.read(name, r0, n);
    ops.matmul(h, w, logits, M, dim, n, threads, block);
    fold(logits, M, n, block, max, sum, threads);
    for (let i = 0; i < M; i++) {
      const t = targets[i]! - r0;
      if (t >= 0 && t < n) tgt[i] = logits[i * block + t]!;
    }
  }
  let nll = 0;
  for (let i = 0; i < M; i++) nll += max[i]! + Math.log(sum[i]!) - tgt[i]!;
  return nll;
}

type Fold = (logits: Float32Array, rows: number, n: number, ld: number, max: Float64Array, sum: Float64Array, threads: number) => void;

/** The addon's logSumExpBlock when built (rows split over threads), else logSumExpBlockTs. */
function logSumExpBlock(): Fold {
  const nn = loadNative();
  return nn ? (l, rows, n, ld, max, sum, threads) => nn.logSumExpBlock(l, rows, n, ld, max, sum, threads) : logSumExpBlockTs;
}

/** Row r: max[r], sum[r] <- the running max and Σ exp(x - max) over logits[r*ld .. r*ld + n) too (float64). */
export function logSumExpBlockTs(logits: Float32Array, rows: number, n: number, ld: number, max: Float64Array, sum: Float64Array): void {
  for (let i = 0; i < rows; i++) {
    const o = i * ld;
    let m = max[i]!;
    for (let j = 0; j < n; j++) m = Math.max(m, logits[o + j]!);
    let s = sum[i]! * Math.exp(max[i]! - m);
    for (let j = 0; j < n; j++) s += Math.exp(logits[o + j]! - m);
    max[i] = m;
    sum[i] = s;
  }
}
