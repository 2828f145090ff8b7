/**
 * DeepSeek-V4's MoE (the later official model.py Gate / Expert / MoE), float32:
 *
 *   s = sqrt(softplus(x Wg^T))                    router scores (scoring_func sqrtsoftplus)
 *   experts: top-k of s + bias, or tid2eid[token] in the first num_hash_layers layers
 *   w = s[experts] / sum s[experts] * routed_scaling_factor
 *   expert e: g = min(w1 x, L), u = clamp(w3 x, -L, L) (L = swiglu_limit, none when 0),
 *             h = w_e * silu(g) * u  (the routing weight BEFORE w2), out = w2 h
 *   y = sum of the routed outputs + the shared expert (same SwiGLU with the clamp, no weight)
 *
 * Under QAT the input of every expert projection is FP8 act-quantized by blocks of 128 (model.py's
 * linear() before an FP4/FP8 weight).
 */
import type { RoutingInfo, V4ForwardOptions } from "../forward.js";
import { streamExperts, type Ctx } from "../forward-context.js";
import { addInto, gatherRows, scatterAddScaled, type Matrix } from "../ops.js";
import { qatInput } from "./qat.js";
import { DeepcastError } from "../../errors.js";

const f = Math.fround;

/** softplus as torch computes it (threshold 20: z itself above), then the square root, in float32. */
export function sqrtSoftplus(z: number): number {
  return f(Math.sqrt(f(z > 20 ? z : Math.log1p(Math.exp(z)))));
}

/**
 * The gate: expert ids and weights per token. `hash` [tokens, k] (ids as floats) replaces the top-k;
 * `bias` shifts the selection only. Scores as model.py's Gate: sqrt(softplus) (V4's configs), sigmoid or
 * softmax; the chosen scores are renormalized unless softmax.
 */
export function routeV4(logits: Float32Array, N: number, E: number, K: number, bias: Float32Array | null, hash: Float32Array | null, routeScale: number, layer: number,
                        scoreFunc: "sqrtsoftplus" | "sigmoid" | "softmax" = "sqrtsoftplus"): RoutingInfo {
  const indices = new Int32Array(N * K);
  const weights = new Float32Array(N * K);
  const expertMargin = new Float32Array(N).fill(Infinity);
  const groupMargin = new Float32Array(N).fill(Infinity);
  const s = new Float32Array(E);
  const sel = new Float32Array(E);
  const order = new Int32Array(E);
  for (let t = 0; t < N; t++) {
    const lg = logits.subarray(t * E, (t + 1) * E);
    if (scoreFunc === "softmax") {
      let mx = -Infinity;
      for (let e = 0; e < E; e++) mx = Math.max(mx, lg[e]!);
      let z = 0;
      for (let e = 0; e < E; e++) z += Math.exp(lg[e]! - mx);
      for (let e = 0; e < E; e++) s[e] = Math.exp(lg[e]! - mx) / z;
    } else {
      for (let e = 0; e < E; e++) s[e] = scoreFunc === "sigmoid" ? f(1 / (1 + Math.exp(-lg[e]!))) : sqrtSoftplus(lg[e]!);
    }
    for (let e = 0; e < E; e++) sel[e] = bias ? f(s[e]! + bias[e]!) : s[e]!;
    if (hash) {
      for (let k = 0; k < K; k++) {
        const e = hash[t * K + k]!;
        if (!Number.isInteger(e) || e < 0 || e >= E) throw new DeepcastError(`tid2eid gives expert ${e}, outside the ${E} routed experts`, { tensor: `layers.${layer}.ffn.gate.tid2eid` });
        indices[t * K + k] = e;
      }
    } else {
      for (let e = 0; e < E; e++) order[e] = e;
      order.sort((a, b) => sel[b]! - sel[a]! || a - b);
      for (let k = 0; k < K; k++) indices[t * K + k] = order[k]!;
      if (K < E) expertMargin[t] = sel[order[K - 1]!]! - sel[order[K]!]!;
    }
    let sum = 0;
    for (let k = 0; k < K; k++) sum = f(sum + s[indices[t * K + k]!]!);
    if (scoreFunc === "softmax") sum = 1;
    for (let k = 0; k < K; k++) weights[t * K + k] = f(f(s[indices[t * K + k]!]! / sum) * routeScale);
  }
  return { layer, tokens: N, topk: K, indices, weights, expertMargin, groupMargin };
}

/** In place: g <- min(g, L), u <- clamp(u, -L, L) (nothing for L = 0), then g <- silu(g) * u. */
function clampedSwiglu(ctx: Ctx, g: Float32Array, u: Float32Array, limit: number): void {
  if (limit > 0) {
    for (let i = 0; i < g.length; i++) {
      g[i] = Math.min(g[i]!, limit);
      u[i] = Math.min(limit, Math.max(-limit, u[i]!));
    }
  }
  ctx.ops.siluMul(g, u, ctx.threads);
}

/** One expert (routed with per-row weights, or shared without) on rows x [n, dim]. */
function expert(ctx: Ctx, p: string, x: Float32Array, n: number, inter: number, w1: Matrix, w3: Matrix, w2: Matrix, rowWeight: Float32Array | null, qat: boolean): Float32Array {
  const dim = ctx.cfg.dim;
  const xq = qatInput(x, n, dim, qat);
  const g = ctx.mm(xq, w1, n, dim, inter, p + "w1.weight");
  const u = ctx.mm(xq, w3, n, dim, inter, p + "w3.weight");
  clampedSwiglu(ctx, g, u, ctx.cfg.v4!.swigluLimit);
  // llama-imatrix sees w2 multiply silu(g)*u unweighted (build_moe_ffn weights after the down projection)
  ctx.observer?.input(p + "w2.weight", g, n, inter);
  if (rowWeight) for (let r = 0; r < n; r++) for (let i = r * inter; i < (r + 1) * inter; i++) g[i] = f(g[i]! * rowWeight[r]!);
  const out = ctx.mm(qatInput(g, n, inter, qat), w2, n, inter, dim);
  ctx.scratch.release(g, u);
  return out;
}

export async function moeV4(ctx: Ctx, l: number, x: Float32Array, N: number, tokens: Int32Array, opts: V4ForwardOptions, onRouting?: (r: RoutingInfo) => void): Promise<Float32Array> {
  const { cfg, src } = ctx;
  const v = cfg.v4!;
  const qat = opts.qat !== false;
  const p = `layers.${l}.ffn.`;
  const E = cfg.nRoutedExperts;
  const K = cfg.nActivatedExperts;
  const dim = cfg.dim;
  const inter = cfg.moeInterDim;
  const gate = await ctx.weight(p + "gate.weight", E, dim);
  const bias = src.has(p + "gate.bias") ? await ctx.vector(p + "gate.bias", E) : null;
  let hash: Float32Array | null = null;
  if (l < v.hashLayers) {
    const table = await ctx.float32(p + "gate.tid2eid", cfg.vocabSize, K);
    hash = new Float32Array(N * K);
    for (let t = 0; t < N; t++) hash.set(table.subarray(tokens[t]! * K, (tokens[t]! + 1) * K), t * K);
  }
  const scores = ctx.mm(x, gate, N, dim, E, p + "gate.weight");
  const r = routeV4(scores, N, E, K, bias, hash, cfg.routeScale, l, cfg.scoreFunc);
  ctx.scratch.release(scores);
  onRouting?.(r);

  // Rows (and their weights) per expert, in token order.
  const rowsOf: number[][] = Array.from({ length: E }, () => []);
  const wOf: number[][] = Array.from({ length: E }, () => []);
  for (let i = 0; i < N * K; i++) {
    rowsOf[r.indices[i]!]!.push(Math.floor(i / K));
    wOf[r.indices[i]!]!.push(r.weights[i]!);
  }
  const used = [...rowsOf.keys()].filter((e) => rowsOf[e]!.length > 0);
  const load = (e: number) => Promise.all([
    ctx.weight(`${p}experts.${e}.w1.weight`, inter, dim),
    ctx.weight(`${p}experts.${e}.w3.weight`, inter, dim),
    ctx.weight(`${p}experts.${e}.w2.weight`, dim, inter),
  ]);
  const y = new Float32Array(N * dim);
  await streamExperts(used, load, (e, [w1, w3, w2]) => {
    const rows = Int32Array.from(rowsOf[e]!);
    const xe = gatherRows(x, rows, dim, ctx.scratch.take(rows.length * dim));
    const out = expert(ctx, `${p}experts.${e}.`, xe, rows.length, inter, w1, w3, w2, Float32Array.from(wOf[e]!), qat);
    scatterAddScaled(y, out, rows, new Float32Array(rows.length).fill(1), dim);
    ctx.scratch.release(xe, out);
  });
  if (cfg.nSharedExperts > 0) {
    const si = cfg.nSharedExperts * inter;
    const sp = p + "shared_experts.";
    const [w1, w3, w2] = await Promise.all([ctx.weight(sp + "w1.weight", si, dim), ctx.weight(sp + "w3.weight", si, dim), ctx.weight(sp + "w2.weight", dim, si)]);
    const z = expert(ctx, sp, x, N, si, w1, w3, w2, null, qat);
    addInto(y, z);
    ctx.scratch.release(z);
  }
  return y;
}
