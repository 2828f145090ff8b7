/**
 * DeepSeek-V3.2's lightning indexer (DeepSeek Sparse Attention), as DeepSeek's V3.2 `inference/model.py`
 * Indexer computes it, with the 2025-11-17 fix (non-interleaved, NEOX-style RoPE in the indexer, as
 * llama.cpp's src/models/deepseek32.cpp also does). Per layer, from the attention input x (after
 * input_layernorm) and qr = q_a_layernorm(q_a_proj x), the query LoRA output MLA uses too:
 *
 *   q = wq_b qr -> [heads, D];  k = LayerNorm(wk x) (weight, bias, eps 1e-6) -> [D]
 *   RoPE on the first qk_rope_head_dim values of each (pairs j, j + dr/2; MLA's YaRN frequencies)
 *   Hadamard (Sylvester order, times D^-0.5) on q and k, then FP8 act-quant per 128 values:
 *     s = 2^ceil(log2(max(amax, 1e-4) / 448)), codes = e4m3(x / s)
 *   w_h = weights_proj(x)_h * heads^-0.5 * s_q,h * D^-0.5
 *   score[i, t] = s_k,t * sum_h relu(q_codes[i, h] . k_codes[t]) * w_h        (t <= i)
 *   query i attends to the min(index_topk, visible) keys of largest score.
 *
 * Up to index_topk visible keys every key is selected, so the layer is dense MLA (the causal mask
 * removes the rest); only longer sequences get a mask. Equal scores: the lower position first.
 */
import { DeepcastError } from "../errors.js";
import { roundToFp8E4m3, f32Bits, f32FromBits } from "../quant/floats.js";
import type { IndexerConfig } from "../io/hf-config-v32.js";
import type { ModelConfig } from "./config.js";
import type { ForwardOps, Matrix } from "./ops.js";

const f = Math.fround;
/** Values per FP8 activation scale (model.py's block_size). */
const QUANT_BLOCK = 128;
const LAYER_NORM_EPS = 1e-6;
const FP8_MAX_INV = f(1 / 448);

/** What the indexer needs of the forward pass: weights by HF name and observed matmuls. */
export interface IndexerIo {
  readonly cfg: ModelConfig;
  readonly ops: ForwardOps;
  readonly threads: number;
  mm(x: Float32Array, w: Matrix, tokens: number, inDim: number, outDim: number, name?: string): Float32Array;
  weight(name: string, rows: number, cols: number): Promise<Matrix>;
  vector(name: string, len: number): Promise<Float32Array>;
}

/** The keys each query of one sequence attends to. */
export interface SequenceSelection {
  /** Tokens of the sequence. */
  n: number;
  /** [n, n]: row i has 1 at the keys query i keeps; null when every query keeps all its visible keys. */
  mask: Uint8Array | null;
  /** [n, n] index scores (row i: query i, -Infinity above the diagonal); null when not kept (or not computed: mask null). */
  scores: Float32Array | null;
}

export interface IndexerOptions {
  /** Keep each sequence's [n, n] scores in the selection (default false). */
  keepScores?: boolean;
  /**
   * true (default): q and k act-quantized to FP8 as model.py does; false: float32 q and k (scales 1),
   * as llama.cpp's deepseek32 graph scores them (which differences are the FP8 step).
   */
  qat?: boolean;
}

/** The indexer's tensors of layer l (HF names). */
export function indexerTensorNames(l: number): string[] {
  const i = `model.layers.${l}.self_attn.indexer.`;
  return [`${i}wq_b.weight`, `${i}wk.weight`, `${i}k_norm.weight`, `${i}k_norm.bias`, `${i}weights_proj.weight`];
}

/** Fails before a pass on an indexer this implementation cannot run. */
export function checkIndexer(cfg: ModelConfig, ix: IndexerConfig): void {
  const bad = (msg: string) => new DeepcastError(`DeepSeek-V3.2 indexer: ${msg}`, { code: "UNSUPPORTED" });
  if (cfg.qLoraRank <= 0) throw bad("the indexer reads the query LoRA output, but q_lora_rank is 0");
  // fp8_index has one key scale per token: one FP8 block per head (and the Hadamard needs a power of two)
  if (ix.headDim !== QUANT_BLOCK) throw bad(`index_head_dim ${ix.headDim} is not ${QUANT_BLOCK} (one FP8 scale block per head, as fp8_index computes)`);
  if (cfg.qkRopeHeadDim > ix.headDim) throw bad(`qk_rope_head_dim ${cfg.qkRopeHeadDim} exceeds index_head_dim ${ix.headDim}`);
}

/** In place: NEOX-style RoPE on the first `dr` values of `heads` vectors of `stride` per row: pairs (j, j + dr/2). */
export function ropeNeox(x: Float32Array, rows: number, heads: number, stride: number, dr: number, pos: Int32Array, tab: { cos: Float32Array; sin: Float32Array }): void {
  const half = dr / 2;
  for (let i = 0; i < rows; i++) {
    const t = pos[i]! * half;
    for (let h = 0; h < heads; h++) {
      const o = (i * heads + h) * stride;
      for (let j = 0; j < half; j++) {
        const c = tab.cos[t + j]!;
        const s = tab.sin[t + j]!;
        const x0 = x[o + j]!;
        const x1 = x[o + j + half]!;
        x[o + j] = f(x0 * c) - f(x1 * s);
        x[o + j + half] = f(x0 * s) + f(x1 * c);
      }
    }
  }
}

/** In place: the Walsh-Hadamard transform (Sylvester order) of each `d`-vector, times d^-0.5 (fast_hadamard_transform). */
export function hadamard(x: Float32Array, d: number): void {
  const scale = f(d ** -0.5);
  for (let o = 0; o < x.length; o += d) {
    for (let len = 1; len < d; len <<= 1) {
      for (let i = o; i < o + d; i += len << 1) {
        for (let j = i; j < i + len; j++) {
          const a = x[j]!;
          const b = x[j + len]!;
          x[j] = a + b;
          x[j + len] = a - b;
        }
      }
    }
    for (let j = o; j < o + d; j++) x[j] = f(x[j]! * scale);
  }
}

/** 2^ceil(log2(v)) of a positive float32, from its bits (kernel.py fast_round_scale). */
function pow2Ceil(v: number): number {
  const bits = f32Bits(v);
  const e = ((bits >>> 23) & 0xff) - 127 + ((bits & 0x7fffff) !== 0 ? 1 : 0);
  return f32FromBits(((e + 127) << 23) >>> 0);
}

/**
 * In place: model.py's act_quant with UE8M0 scales over blocks of 128 — each value becomes its e4m3
 * code's value (x / s rounded), and `scales[b]` the block's power-of-two scale s.
 */
export function fp8ActQuant(x: Float32Array, scales: Float32Array): void {
  for (let b = 0; b * QUANT_BLOCK < x.length; b++) {
    const o = b * QUANT_BLOCK;
    let amax = 0;
    for (let j = o; j < o + QUANT_BLOCK; j++) amax = Math.max(amax, Math.abs(x[j]!));
    const s = pow2Ceil(f(Math.max(amax, f(1e-4)) * FP8_MAX_INV));
    scales[b] = s;
    for (let j = o; j < o + QUANT_BLOCK; j++) x[j] = roundToFp8E4m3(x[j]! / s);
  }
}

/** LayerNorm over rows of `d` (mean and variance in float64, the rest float32 as F.layer_norm). */
function layerNorm(x: Float32Array, rows: number, d: number, w: Float32Array, b: Float32Array, eps: number): void {
  for (let r = 0; r < rows; r++) {
    const o = r * d;
    let sum = 0;
    for (let j = 0; j < d; j++) sum += x[o + j]!;
    const mean = sum / d;
    let ss = 0;
    for (let j = 0; j < d; j++) ss += (x[o + j]! - mean) ** 2;
    const inv = f(1 / Math.sqrt(ss / d + eps));
    const m = f(mean);
    for (let j = 0; j < d; j++) x[o + j] = f(f(f(x[o + j]! - m) * inv) * w[j]!) + b[j]!;
  }
}

/**
 * Runs layer l's indexer over the batch (sequence b is rows offsets[b]..offsets[b+1]-1, positions
 * from 0) and returns each sequence's selection. The projections always run (the observer sees
 * their inputs); scores and top-k only for sequences longer than index_topk.
 */
export async function indexerSelect(io: IndexerIo, l: number, x: Float32Array, qr: Float32Array, N: number, pos: Int32Array, offsets: Int32Array,
                                    ropeTab: { cos: Float32Array; sin: Float32Array }, opts: IndexerOptions = {}): Promise<SequenceSelection[]> {
  const { cfg } = io;
  const ix = cfg.indexer!;
  checkIndexer(cfg, ix);
  const p = `model.layers.${l}.self_attn.indexer.`;
  const Hi = ix.nHeads;
  const D = ix.headDim;
  const dim = cfg.dim;
  const [wqb, wk, kNormW, kNormB, wProj] = await Promise.all([
    io.weight(p + "wq_b.weight", Hi * D, cfg.qLoraRank),
    io.weight(p + "wk.weight", D, dim),
    io.vector(p + "k_norm.weight", D),
    io.vector(p + "k_norm.bias", D),
    io.weight(p + "weights_proj.weight", Hi, dim),
  ]);
  const q = io.mm(qr, wqb, N, cfg.qLoraRank, Hi * D, p + "wq_b.weight");
  const k = io.mm(x, wk, N, dim, D, p + "wk.weight");
  const w = io.mm(x, wProj, N, dim, Hi, p + "weights_proj.weight");
  const out: SequenceSelection[] = [];
  const longest = Math.max(0, ...Array.from({ length: offsets.length - 1 }, (_, b) => offsets[b + 1]! - offsets[b]!));
  if (longest <= ix.topk) {
    for (let b = 0; b + 1 < offsets.length; b++) out.push({ n: offsets[b + 1]! - offsets[b]!, mask: null, scores: null });
    return out;
  }
  layerNorm(k, N, D, kNormW, kNormB, LAYER_NORM_EPS);
  ropeNeox(q, N, Hi, D, cfg.qkRopeHeadDim, pos, ropeTab);
  ropeNeox(k, N, 1, D, cfg.qkRopeHeadDim, pos, ropeTab);
  hadamard(q, D);
  hadamard(k, D);
  const qScale = new Float32Array(N * Hi * (D / QUANT_BLOCK));
  const kScale = new Float32Array(N * (D / QUANT_BLOCK));
  if (opts.qat === false) {
    qScale.fill(1);
    kScale.fill(1);
  } else {
    fp8ActQuant(q, qScale);
    fp8ActQuant(k, kScale);
  }
  // w_h * heads^-0.5 * q_scale_h * D^-0.5 (model.py's order)
  const hScale = f(Hi ** -0.5);
  const dScale = f(D ** -0.5);
  for (let r = 0; r < N * Hi; r++) w[r] = f(f(f(w[r]! * hScale) * qScale[r]!) * dScale);

  for (let b = 0; b + 1 < offsets.length; b++) {
    const t0 = offsets[b]!;
    const n = offsets[b + 1]! - t0;
    if (n <= ix.topk) {
      out.push({ n, mask: null, scores: null });
      continue;
    }
    const scores = sequenceScores(io, q.subarray(t0 * Hi * D, (t0 + n) * Hi * D), k.subarray(t0 * D, (t0 + n) * D), w.subarray(t0 * Hi, (t0 + n) * Hi),
      kScale.subarray(t0, t0 + n), n, Hi, D);
    out.push({ n, mask: topkMask(scores, n, ix.topk), scores: opts.keepScores ? scores : null });
  }
  return out;
}

/** [n, n] scores of one sequence (fp8_index): q codes [n, Hi, D], k codes [n, D], weights [n, Hi], k scales [n]. */
function sequenceScores(io: IndexerIo, q: Float32Array, k: Float32Array, w: Float32Array, kScale: Float32Array, n: number, Hi: number, D: number): Float32Array {
  const scores = new Float32Array(n * n).fill(-Infinity);
  // queries in blocks, so the [rows*Hi, n] logits stay small
  const block = Math.max(1, Math.floor((16 << 20) / (Hi * n)));
  for (let i0 = 0; i0 < n; i0 += block) {
    const rows = Math.min(block, n - i0);
    const kq = new Float32Array(rows * Hi * n);
    io.ops.matmul(q.subarray(i0 * Hi * D, (i0 + rows) * Hi * D), k, kq, rows * Hi, D, n, io.threads);
    for (let r = 0; r < rows; r++) {
      const i = i0 + r;
      for (let t = 0; t <= i; t++) {
        let acc = 0;
        for (let h = 0; h < Hi; h++) {
          const s = kq[(r * Hi + h) * n + t]!;
          if (s > 0) acc += f(s * w[i * Hi + h]!);
        }
        scores[i * n + t] = f(f(acc) * kScale[t]!);
      }
    }
  }
  return scores;
}

/** Row i keeps the min(topk, i+1) keys t <= i of largest score (equal scores: lower t first). */
function topkMask(scores: Float32Array, n: number, topk: number): Uint8Array {
  const mask = new Uint8Array(n * n);
  const idx = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const row = scores.subarray(i * n, i * n + i + 1);
    if (i + 1 <= topk) {
      mask.fill(1, i * n, i * n + i + 1);
      continue;
    }
    const order = idx.subarray(0, i + 1);
    for (let t = 0; t <= i; t++) order[t] = t;
    order.sort((a, b) => (row[b]! - row[a]!) || a - b);
    for (let j = 0; j < topk; j++) mask[i * n + order[j]!] = 1;
  }
  return mask;
}
