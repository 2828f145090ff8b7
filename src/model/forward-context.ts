/**
 * What every generation's forward pass shares: the weight access of one pass (Ctx: shape-checked
 * reads, prefetch, matmuls that tell the observer their inputs) and the rows logitsFrom keeps.
 */
import { DeepcastError } from "../errors.js";
import type { ModelConfig } from "./config.js";
import type { MatmulObserver } from "./forward.js";
import type { ForwardOps, Matrix } from "./ops.js";
import { Scratch } from "./scratch.js";
import { forwardBytesPerToken } from "./forward-memory.js";

/**
 * The activation pool of a pass over N tokens: the caller's (one that goes on using it), else one
 * holding up to twice the activations the memory plans allow for (forward-memory.ts).
 */
export function passScratch(cfg: ModelConfig, N: number, given?: Scratch): Scratch {
  return given ?? new Scratch(2 * forwardBytesPerToken(cfg) * N);
}
import type { WeightSource } from "./weights.js";

/** Token ids, positions and per-sequence offsets of a batch, checked against the config. */
export function packSequences(cfg: ModelConfig, sequences: readonly ArrayLike<number>[]): { tokens: Int32Array; pos: Int32Array; offsets: Int32Array; maxLen: number; N: number } {
  const B = sequences.length;
  const offsets = new Int32Array(B + 1);
  let maxLen = 0;
  for (let b = 0; b < B; b++) {
    const len = sequences[b]!.length;
    offsets[b + 1] = offsets[b]! + len;
    maxLen = Math.max(maxLen, len);
  }
  const N = offsets[B]!;
  const tokens = new Int32Array(N);
  const pos = new Int32Array(N);
  for (let b = 0; b < B; b++) {
    const s = sequences[b]!;
    for (let p = 0; p < s.length; p++) {
      const id = s[p]!;
      if (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize) {
        throw new DeepcastError(`token id ${id} (sequence ${b}, position ${p}) is outside the vocabulary of ${cfg.vocabSize}`);
      }
      tokens[offsets[b]! + p] = id;
      pos[offsets[b]! + p] = p;
    }
  }
  if (maxLen > cfg.maxPositionEmbeddings) {
    throw new DeepcastError(`a sequence of ${maxLen} tokens is longer than max_position_embeddings ${cfg.maxPositionEmbeddings}`);
  }
  return { tokens, pos, offsets, maxLen, N };
}

export class Ctx {
  constructor(
    readonly src: WeightSource,
    readonly cfg: ModelConfig,
    readonly ops: ForwardOps,
    readonly threads: number,
    readonly observer: MatmulObserver | undefined,
    /** The pass's activation buffers (a pool of capacity 0 pools nothing). */
    readonly scratch: Scratch = new Scratch(0),
  ) {}

  /** y = x W^T for a weight [out, in] already read; `name` (HF) is told to the observer. y comes from the scratch pool. */
  mm(x: Float32Array, w: Matrix, tokens: number, inDim: number, outDim: number, name?: string): Float32Array {
    if (name && this.observer) this.observer.input(name, x, tokens, inDim);
    const y = this.scratch.take(tokens * outDim);
    if (w instanceof Float32Array) {
      if (w.length !== outDim * inDim) throw new DeepcastError(`internal: weight of ${w.length} values, expected ${outDim} x ${inDim}`);
      this.ops.matmul(x, w, y, tokens, inDim, outDim, this.threads);
    } else {
      this.ops.matmulStored!(x, w, y, tokens, inDim, outDim, this.threads);
    }
    return y;
  }

  /** Whether 2-D weights are read in their stored form (the ops multiply it without converting it whole). */
  private get stored(): boolean {
    return this.ops.matmulStored !== undefined && this.src.readStored !== undefined;
  }

  /** A 2-D weight in its stored form when the source and the ops allow, else float32. */
  load(name: string, start?: number, count?: number): Promise<Matrix> {
    if (!this.stored) return this.src.read(name, start, count);
    return this.src.readStored!(name, start, count).then((m): Promise<Matrix> | Matrix => m ?? this.src.read(name, start, count));
  }

  private readonly pending = new Map<string, Promise<Matrix>>();

  /** Starts reading whole tensors that a later `weight`/`vector` call will take (reads overlap compute). */
  prefetch(names: readonly string[]): void {
    for (const name of names) {
      if (this.pending.has(name) || !this.src.has(name)) continue;
      const p = this.src.shape(name).length === 2 ? this.load(name) : this.src.read(name);
      p.catch(() => undefined);
      this.pending.set(name, p);
    }
  }

  private take(name: string, matrix: boolean): Promise<Matrix> {
    const p = this.pending.get(name);
    if (!p) return matrix ? this.load(name) : this.src.read(name);
    this.pending.delete(name);
    return p;
  }

  async weight(name: string, rows: number, cols: number): Promise<Matrix> {
    const shape = this.src.shape(name);
    if (shape.length !== 2 || shape[0] !== rows || shape[1] !== cols) {
      throw new DeepcastError(`shape [${shape.join(", ")}] does not match the config: expected [${rows}, ${cols}]`, { file: this.src.description, tensor: name });
    }
    const w = await this.take(name, true);
    const n = w instanceof Float32Array ? w.length : w.rows * w.cols;
    if (n !== rows * cols) throw new DeepcastError(`read ${n} values, expected ${rows * cols}`, { file: this.src.description, tensor: name });
    return w;
  }

  /** A 2-D tensor always as float32 (an additive table, not a matmul weight); never prefetched. */
  async float32(name: string, rows: number, cols: number): Promise<Float32Array> {
    const shape = this.src.shape(name);
    if (shape.length !== 2 || shape[0] !== rows || shape[1] !== cols) {
      throw new DeepcastError(`shape [${shape.join(", ")}] does not match the config: expected [${rows}, ${cols}]`, { file: this.src.description, tensor: name });
    }
    return this.src.read(name);
  }

  async vector(name: string, len: number): Promise<Float32Array> {
    const shape = this.src.shape(name);
    if (shape.length !== 1 || shape[0] !== len) {
      throw new DeepcastError(`shape [${shape.join(", ")}] does not match the config: expected [${len}]`, { file: this.src.description, tensor: name });
    }
    const v = await this.take(name, false);
    if (!(v instanceof Float32Array)) throw new DeepcastError("internal: a vector was read in stored form", { file: this.src.description, tensor: name });
    return v;
  }

  /** Waits for prefetches nobody took (after an error), so no read outlives the pass. */
  async drain(): Promise<void> {
    await Promise.allSettled(this.pending.values());
    this.pending.clear();
  }
}

export /** The rows (and per-sequence offsets) of the positions logitsFrom asks for; null for all rows. */
function outputRows(sequences: readonly ArrayLike<number>[], offsets: Int32Array, logitsFrom?: readonly number[]): { rows: Int32Array; offsets: Int32Array } | null {
  if (!logitsFrom) return null;
  const B = sequences.length;
  if (logitsFrom.length !== B) throw new DeepcastError(`logitsFrom has ${logitsFrom.length} entries for ${B} sequences`);
  const out = new Int32Array(B + 1);
  for (let b = 0; b < B; b++) {
    const first = logitsFrom[b]!;
    const len = sequences[b]!.length;
    if (!Number.isInteger(first) || first < 0 || first > len) throw new DeepcastError(`logitsFrom[${b}] = ${first} is outside sequence ${b} of ${len} tokens`);
    out[b + 1] = out[b]! + len - first;
  }
  if (out[B] === offsets[B]) return null;
  const rows = new Int32Array(out[B]!);
  for (let b = 0; b < B; b++) for (let i = 0; i < out[b + 1]! - out[b]!; i++) rows[out[b]! + i] = offsets[b]! + logitsFrom[b]! + i;
  return { rows, offsets: out };
}


/** Rows of the embedding `name` for every token (read row by row, or whole when most rows are needed). */
export async function embed(ctx: Ctx, tokens: Int32Array, name: string): Promise<Float32Array> {
  const { cfg, src } = ctx;
  const shape = src.shape(name);
  if (shape.length !== 2 || shape[0]! < cfg.vocabSize || shape[1] !== cfg.dim) {
    throw new DeepcastError(`shape [${shape.join(", ")}] does not match the config: expected [${cfg.vocabSize}, ${cfg.dim}]`, { file: src.description, tensor: name });
  }
  const dim = cfg.dim;
  const h = new Float32Array(tokens.length * dim);
  const unique = [...new Set(tokens)].sort((a, b) => a - b);
  const rows = new Map<number, Float32Array>();
  if (unique.length * 8 > cfg.vocabSize && cfg.vocabSize * dim * 4 <= 256 * 1024 * 1024) {
    const all = await src.read(name, 0, cfg.vocabSize);
    for (const id of unique) rows.set(id, all.subarray(id * dim, (id + 1) * dim));
  } else {
    for (const id of unique) rows.set(id, await src.read(name, id, 1));
  }
  for (let i = 0; i < tokens.length; i++) h.set(rows.get(tokens[i]!)!, i * dim);
  return h;
}

/** The HF name of the head's weight (the embedding under tied embeddings without an lm_head). */
export function headName(cfg: ModelConfig, src: WeightSource): string {
  if (cfg.v4) return "head.weight";
  return cfg.tieWordEmbeddings && !src.has("lm_head.weight") ? "model.embed_tokens.weight" : "lm_head.weight";
}

/** Final head, read and applied in row chunks so a 129k x 7168 head is never whole in float32. */
export async function head(ctx: Ctx, h: Float32Array, N: number): Promise<Float32Array> {
  const { cfg, src } = ctx;
  const name = headName(cfg, src);
  ctx.observer?.input(name, h, N, cfg.dim);
  const shape = src.shape(name);
  const V = cfg.vocabSize;
  if (shape.length !== 2 || shape[0] !== V || shape[1] !== cfg.dim) {
    throw new DeepcastError(`shape [${shape.join(", ")}] does not match the config: expected [${V}, ${cfg.dim}]`, { file: src.description, tensor: name });
  }
  const logits = new Float32Array(N * V);
  const chunk = Math.max(128, Math.floor((64 * 1024 * 1024) / (cfg.dim * 4 * 128)) * 128);
  for (let r0 = 0; r0 < V; r0 += chunk) {
    const n = Math.min(chunk, V - r0);
    const w = await ctx.load(name, r0, n);
    if (w instanceof Float32Array) ctx.ops.matmul(h, w, logits.subarray(r0), N, cfg.dim, n, ctx.threads, V);
    else ctx.ops.matmulStored!(h, w, logits.subarray(r0), N, cfg.dim, n, ctx.threads, V);
  }
  return logits;
}

/**
 * Runs `body` for each expert in `used`, in order, with its weights; the next expert's weights are
 * read while this one computes, so memory holds at most two experts.
 */
export async function streamExperts<W>(used: readonly number[], load: (e: number) => Promise<W>, body: (e: number, w: W) => void): Promise<void> {
  let pending = used.length ? load(used[0]!) : null;
  for (let u = 0; u < used.length; u++) {
    const w = await pending!;
    pending = u + 1 < used.length ? load(used[u + 1]!) : null;
    pending?.catch(() => undefined);
    body(used[u]!, w);
  }
}
