/**
 * DeepSeek-V4's attention block (model.py Attention, prefill), float32:
 *
 *   qr = q_norm(wq_a x);  q = wq_b qr per head, RMS-normalized without a weight, RoPE on its last dims
 *   kv = kv_norm(wkv x): ONE head used as key and value; RoPE on its last dims (QAT: FP8 on the rest)
 *   query t attends to the sliding window (its sequence's positions t-window+1..t), plus for ratio 128
 *   every visible compressed entry, for ratio 4 the indexer's choice of them (./compressor.ts,
 *   ./indexer.ts); softmax(q.k * head_dim^-0.5) with a per-head sink in the denominator
 *   o = sum p v, rotated back (inverse RoPE) on its last dims
 *   grouped output LoRA: head groups g -> o_g wo_a[g]^T (o_lora each), concatenated -> wo_b.
 *
 * RoPE: ratio-0 layers rope_theta without YaRN, compressed layers compress_rope_theta with YaRN (./rope.ts).
 */
import type { V4ForwardOptions } from "../forward.js";
import type { Ctx } from "../forward-context.js";
import { rmsNorm, rope, type Matrix } from "../ops.js";
import { compress } from "./compressor.js";
import { indexScores, topVisible } from "./indexer.js";
import { fp4ActQuant, fp8ActQuant, hadamard, qatInput } from "./qat.js";
import type { V4Rope } from "./rope.js";

const f = Math.fround;

/** Rows [r0, r0+n) of a weight, as a Matrix of its own. */
export function weightRows(w: Matrix, r0: number, n: number, cols: number): Matrix {
  if (w instanceof Float32Array) return w.subarray(r0 * cols, (r0 + n) * cols);
  const rowBytes = w.data.length / w.rows;
  return { type: w.type, data: w.data.subarray(r0 * rowBytes, (r0 + n) * rowBytes), rows: n, cols: w.cols };
}

/**
 * Attention of one query over `K` keys [K, d] (the values are the keys) with a sink per head:
 * out[h] = sum_k e^(s_k - m) key_k / (sum_k e^(s_k - m) + e^(sink_h - m)), s_k = f32(q_h . key_k) * scale, m = max_k s_k.
 */
export function sinkAttention(ctx: Pick<Ctx, "ops" | "threads">, q: Float32Array, heads: number, d: number, keys: Float32Array, K: number,
                              sink: Float32Array, scale: number, out: Float32Array): void {
  const s = new Float32Array(heads * K);
  ctx.ops.matmul(q, keys, s, heads, d, K, 1);
  const kT = new Float32Array(d * K);
  for (let k = 0; k < K; k++) for (let c = 0; c < d; c++) kT[c * K + k] = keys[k * d + c]!;
  const sc = f(scale);
  for (let h = 0; h < heads; h++) {
    const row = s.subarray(h * K, (h + 1) * K);
    let m = -Infinity;
    for (let k = 0; k < K; k++) {
      row[k] = f(row[k]! * sc);
      m = Math.max(m, row[k]!);
    }
    let sum = 0;
    for (let k = 0; k < K; k++) {
      const e = Math.exp(row[k]! - m);
      row[k] = e;
      sum += e;
    }
    sum += Math.exp(sink[h]! - m);
    for (let k = 0; k < K; k++) row[k] = row[k]! / sum;
  }
  ctx.ops.matmul(s, kT, out, heads, K, d, 1);
}

export async function attentionV4(ctx: Ctx, l: number, x: Float32Array, N: number, pos: Int32Array, offsets: Int32Array,
                                  ropes: { plain: V4Rope; compressed: V4Rope }, opts: V4ForwardOptions): Promise<Float32Array> {
  const cfg = ctx.cfg;
  const v = cfg.v4!;
  const qat = opts.qat !== false;
  const p = `layers.${l}.attn.`;
  const H = cfg.nHeads;
  const hd = v.headDim;
  const rd = cfg.qkRopeHeadDim;
  const dim = cfg.dim;
  const ql = cfg.qLoraRank;
  const G = v.oGroups;
  const gw = (H * hd) / G;
  const eps = cfg.rmsNormEps;
  const ratio = v.compressRatios[l]!;
  const tabs = ratio ? ropes.compressed : ropes.plain;

  const [wqa, qNorm, wqb, wkv, kvNorm, sink] = await Promise.all([
    ctx.weight(p + "wq_a.weight", ql, dim), ctx.vector(p + "q_norm.weight", ql), ctx.weight(p + "wq_b.weight", H * hd, ql),
    ctx.weight(p + "wkv.weight", hd, dim), ctx.vector(p + "kv_norm.weight", hd), ctx.vector(p + "attn_sink", H),
  ]);
  const xq = qatInput(x, N, dim, qat);
  const qr = rmsNorm(ctx.mm(xq, wqa, N, dim, ql, p + "wq_a.weight"), N, ql, qNorm, eps);
  const qrq = qatInput(qr, N, ql, qat);
  const q = ctx.mm(qrq, wqb, N, ql, H * hd, p + "wq_b.weight");
  rmsNorm(q, N * H, hd, new Float32Array(hd).fill(1), eps);
  rope(q, N, H * hd, hd - rd, H, hd, rd, pos, tabs.fwd);
  const kv = rmsNorm(ctx.mm(xq, wkv, N, dim, hd, p + "wkv.weight"), N, hd, kvNorm, eps);
  rope(kv, N, hd, hd - rd, 1, 0, rd, pos, tabs.fwd);
  if (qat) fp8ActQuant(kv, N, hd, 0, hd - rd, 64);

  // Compressed entries per sequence, and for ratio 4 the indexer's choice per query.
  const B = offsets.length - 1;
  const entries: Float32Array[] = [];
  let chosen: ((b: number, t: number) => Int32Array) | null = null;
  if (ratio) {
    const c = await compressorOf(ctx, p + "compressor.", x, N, ratio, hd);
    for (let b = 0; b < B; b++) {
      entries.push(compress({ ...c, row0: offsets[b]!, n: offsets[b + 1]! - offsets[b]!, ratio, d: hd, eps, ropeDim: rd, rope: tabs.fwd, qat: qat ? "fp8" : null }));
    }
    if (ratio === 4) chosen = await indexer(ctx, p + "indexer.", x, qrq, N, pos, offsets, tabs, opts);
  }

  const o = new Float32Array(N * H * hd);
  const scale = hd ** -0.5;
  for (let b = 0; b < B; b++) {
    const o0 = offsets[b]!;
    const n = offsets[b + 1]! - o0;
    for (let t = 0; t < n; t++) {
      const w0 = Math.max(0, t - v.slidingWindow + 1);
      const visible = ratio ? Math.floor((t + 1) / ratio) : 0;
      const comp = !ratio ? new Int32Array(0) : chosen ? chosen(b, t) : Int32Array.from({ length: visible }, (_, j) => j);
      const K = t - w0 + 1 + comp.length;
      const keys = new Float32Array(K * hd);
      keys.set(kv.subarray((o0 + w0) * hd, (o0 + t + 1) * hd));
      for (let j = 0; j < comp.length; j++) keys.set(entries[b]!.subarray(comp[j]! * hd, (comp[j]! + 1) * hd), (t - w0 + 1 + j) * hd);
      sinkAttention(ctx, q.subarray((o0 + t) * H * hd, (o0 + t + 1) * H * hd), H, hd, keys, K, sink, scale, o.subarray((o0 + t) * H * hd, (o0 + t + 1) * H * hd));
    }
  }
  if (!opts.skipInverseRope) rope(o, N, H * hd, hd - rd, H, hd, rd, pos, tabs.inv);

  // Grouped output LoRA: group g's heads through wo_a's rows g*o_lora.., then wo_b.
  const [woa, wob] = await Promise.all([ctx.weight(p + "wo_a.weight", G * v.oLoraRank, gw), ctx.weight(p + "wo_b.weight", dim, G * v.oLoraRank)]);
  ctx.observer?.input(p + "wo_a.weight", o, N, H * hd);
  const oc = new Float32Array(N * G * v.oLoraRank);
  const og = new Float32Array(N * gw);
  for (let g = 0; g < G; g++) {
    for (let t = 0; t < N; t++) og.set(o.subarray(t * H * hd + g * gw, t * H * hd + (g + 1) * gw), t * gw);
    const y = ctx.mm(og, weightRows(woa, g * v.oLoraRank, v.oLoraRank, gw), N, gw, v.oLoraRank);
    for (let t = 0; t < N; t++) oc.set(y.subarray(t * v.oLoraRank, (t + 1) * v.oLoraRank), (t * G + g) * v.oLoraRank);
  }
  return ctx.mm(qatInput(oc, N, G * v.oLoraRank, qat), wob, N, G * v.oLoraRank, dim, p + "wo_b.weight");
}

/** A compressor's projections of every row (float32 linears: no QAT) and its ape and norm. */
async function compressorOf(ctx: Ctx, p: string, x: Float32Array, N: number, ratio: number, d: number) {
  const dim = ctx.cfg.dim;
  const w = (ratio === 4 ? 2 : 1) * d;
  const [wkv, wgate, ape, norm] = await Promise.all([
    ctx.weight(p + "wkv.weight", w, dim), ctx.weight(p + "wgate.weight", w, dim), ctx.float32(p + "ape", ratio, w), ctx.vector(p + "norm.weight", d),
  ]);
  return { kv: ctx.mm(x, wkv, N, dim, w, p + "wkv.weight"), score: ctx.mm(x, wgate, N, dim, w, p + "wgate.weight"), ape, norm };
}

/** The indexer of a ratio-4 layer: for sequence b and position t, the compressed entries kept. */
async function indexer(ctx: Ctx, p: string, x: Float32Array, qr: Float32Array, N: number, pos: Int32Array, offsets: Int32Array,
                       tabs: V4Rope, opts: V4ForwardOptions): Promise<(b: number, t: number) => Int32Array> {
  const cfg = ctx.cfg;
  const v = cfg.v4!;
  const qat = opts.qat !== false;
  const ih = v.indexHeads;
  const id = v.indexHeadDim;
  const rd = cfg.qkRopeHeadDim;
  const [wqb, wproj] = await Promise.all([ctx.weight(p + "wq_b.weight", ih * id, cfg.qLoraRank), ctx.weight(p + "weights_proj.weight", ih, cfg.dim)]);
  const c = await compressorOf(ctx, p + "compressor.", x, N, 4, id);
  if (opts.indexer === "all") return (_b, t) => Int32Array.from({ length: Math.floor((t + 1) / 4) }, (_, j) => j);
  const q = ctx.mm(qr, wqb, N, cfg.qLoraRank, ih * id, p + "wq_b.weight");
  rope(q, N, ih * id, id - rd, ih, id, rd, pos, tabs.fwd);
  if (qat) {
    hadamard(q, N * ih, id);
    fp4ActQuant(q, N * ih, id);
  }
  const w = ctx.mm(x, wproj, N, cfg.dim, ih, p + "weights_proj.weight");
  const ws = f(id ** -0.5 * ih ** -0.5);
  for (let i = 0; i < w.length; i++) w[i] = f(w[i]! * ws);
  const keys: Float32Array[] = [];
  for (let b = 0; b + 1 < offsets.length; b++) {
    keys.push(compress({ ...c, row0: offsets[b]!, n: offsets[b + 1]! - offsets[b]!, ratio: 4, d: id, eps: cfg.rmsNormEps, ropeDim: rd, rope: tabs.fwd, qat: qat ? "fp4" : null }));
  }
  return (b, t) => {
    const n = offsets[b + 1]! - offsets[b]!;
    const visible = Math.floor((t + 1) / 4);
    const row = offsets[b]! + t;
    return topVisible(indexScores(q, row * ih * id, w, row * ih, keys[b]!, visible, ih, id), visible, Math.min(v.indexTopk, Math.floor(n / 4)));
  };
}
