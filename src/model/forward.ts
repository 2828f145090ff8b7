/**
 * Reference forward pass of the DeepSeek-V3 architecture, following DeepSeek's
 * `inference/model.py` (Transformer.forward, with logits at every position) in float32:
 *
 *   h = embed[tokens]
 *   per layer:  h = h + MLA(RMSNorm(h));  h = h + FFN(RMSNorm(h))   (dense MLP or MoE)
 *   logits = head(RMSNorm(h))
 *
 * MLA: q = W_qb RMSNorm(W_qa x) (or W_q x without q LoRA), split per head into [nope, rope];
 * kv = W_kva x = [c_kv, k_pe]; RoPE (YaRN frequencies, interleaved pairs) on q_rope and the
 * shared k_pe; k_nope and v from W_kvb RMSNorm(c_kv); causal softmax((q.k) * scale) v; W_o.
 * MoE: sigmoid router scores s, expert selection on s + e_score_correction_bias with group-limited
 * top-k (group score = sum of its top-2 biased scores), combine weights = unbiased s of the chosen
 * experts normalized to 1, times routed_scaling_factor; plus the shared experts.
 * DeepSeek-V3.2 (config.indexer): each query attends only to the keys its layer's lightning indexer
 * selects (./indexer-v32.ts), which is every visible key up to index_topk tokens.
 *
 * All sequences of a batch are processed together, layer by layer: the weights of one layer (and
 * within a MoE layer, of one expert at a time) are read from the WeightSource, used for every
 * token, and dropped, so memory is one layer's attention weights or two experts plus the
 * activations, never the model. The MTP module (layers after num_hidden_layers) is not run.
 */
import { availableParallelism } from "node:os";
import { DeepcastError } from "../errors.js";
import { isMoeLayer, qkHeadDim, ropeTables, softmaxScale, type ModelConfig } from "./config.js";
import { Ctx, embed, head, headName, outputRows, packSequences, passScratch, streamExperts } from "./forward-context.js";
import { forwardV4 } from "./forward-v4.js";
import { indexerSelect, indexerTensorNames, type SequenceSelection } from "./indexer-v32.js";
import type { Scratch } from "./scratch.js";
import { addInto, copyRows, forwardOps, gatherRows, maskedAttention, mlaKv, rmsNorm, rope, scatterAddScaled, type ForwardOps, type Matrix } from "./ops.js";
import type { WeightSource } from "./weights.js";

const f = Math.fround;

/** The router's decisions for every token of one MoE layer. */
export interface RoutingInfo {
  layer: number;
  tokens: number;
  /** Experts per token (num_experts_per_tok). */
  topk: number;
  /** [tokens, topk] expert ids, by descending selection score (model.py's topk order). */
  indices: Int32Array;
  /** [tokens, topk] combine weights (normalized, times routed_scaling_factor). */
  weights: Float32Array;
  /** [tokens] topk-th minus (topk+1)-th largest selection score among the kept groups (Infinity if none). */
  expertMargin: Float32Array;
  /** [tokens] last kept minus first dropped group score (Infinity without group limiting). */
  groupMargin: Float32Array;
}

/**
 * Sees the input rows of every weight matrix the pass multiplies (importance statistics: imatrix).
 * Called synchronously; the arrays are only valid during the call.
 */
export interface MatmulObserver {
  /** x [rows, cols] multiplied by the HF weight `weight` (a routed expert's: only the rows routed to it). */
  input(weight: string, x: Float32Array, rows: number, cols: number): void;
  /**
   * MLA as llama.cpp runs it (kv_b_proj absorbed, GGUF attn_k_b / attn_v_b): per token and head, the
   * no-RoPE query part qNope [rows, heads * qk_nope] and the attention output in the latent space
   * latent [rows, heads * kv_lora_rank] (softmax weights times the normed c_kv). May be called several
   * times per layer (rows in sequence order); computed only when this method exists.
   */
  absorbedMla?(layer: number, qNope: Float32Array, latent: Float32Array, rows: number): void;
}

export interface ForwardOptions {
  /** Worker threads for the native kernels (default: all cores). */
  threads?: number;
  /** Called once per MoE layer with its routing decisions. */
  onRouting?: (r: RoutingInfo) => void;
  /** Called after each decoder layer (and after the head, with layer = nLayers). */
  onLayer?: (layer: number) => void;
  /** Kernel backend (default: native when built, else TypeScript). */
  ops?: ForwardOps;
  /** Gets the input of every weight matrix, the head's included. */
  observer?: MatmulObserver;
  /** "hidden": skip the head and return the final normed hidden states (for callers that stream the head). */
  output?: "logits" | "hidden";
  /**
   * Per sequence, the first position whose logits are wanted (default: 0, all). Earlier positions
   * still run through every attention (later ones attend to them) but skip the last layer's FFN
   * and the head, as llama.cpp skips rows it has no output for; the rows returned are bit-identical
   * to those of a full pass. `offsets` then counts the returned rows only.
   */
  logitsFrom?: readonly number[];
  /** DeepSeek-V3.2 only (config.indexer, ./indexer-v32.ts); ignored for V3. */
  v32?: V32ForwardOptions;
  /**
   * The activation pool (./scratch.ts) of the pass, for a caller that goes on using it (default: one
   * of the pass's own, holding up to twice the activations the memory plans allow for).
   */
  scratch?: Scratch;
  /** DeepSeek-V4 only (src/model/forward-v4.ts): its simulations and checks; ignored for V3. */
  v4?: V4ForwardOptions;
}

export interface V32ForwardOptions {
  /**
   * model.py's FP8 act-quant of the indexer's q and k before scoring (default true, as model.py);
   * false: float32 q and k, as llama.cpp's deepseek32 graph scores them.
   */
  qat?: boolean;
  /** Called once per layer with the keys its indexer selected, per sequence (with the scores where it masked). */
  onIndexer?: (layer: number, selection: readonly SequenceSelection[]) => void;
}

export interface V4ForwardOptions {
  /**
   * model.py's quantization-aware-training simulations (default true, as model.py): FP8 act-quant
   * (per 128, power-of-two scales) of the input of every FP8/FP4 linear, FP8 act-quant of the KV's
   * and the compressor's non-RoPE dims (per 64), the indexer's Hadamard rotation and FP4 fake-quant.
   * false: none of them, as llama.cpp runs the model (spec §4.4).
   */
  qat?: boolean;
  /** Replace the indexer's top-k by every visible compressed entry (the oracle of spec §5 (e)). */
  indexer?: "topk" | "all";
  /** A deliberate error for tests that must see it: skip the inverse RoPE of the attention output. */
  skipInverseRope?: boolean;
}

export interface ForwardResult {
  /** [totalTokens, vocab] float32: row i is the next-token logits after token i of its sequence. */
  logits: Float32Array;
  /**
   * [B+1] start of each sequence's rows in `logits`; sequence b is rows offsets[b]..offsets[b+1]-1,
   * row offsets[b] + i holding position logitsFrom[b] + i (logitsFrom[b] = 0 by default).
   */
  offsets: Int32Array;
  vocab: number;
  /** With output "hidden": [totalTokens, dim] after the final norm (logits is then empty). */
  hidden?: Float32Array;
}

/** The tensors of layer l's attention block (with its input norm), for prefetching. */
function attentionNames(cfg: ModelConfig, l: number): string[] {
  const p = `model.layers.${l}.`;
  const a = p + "self_attn.";
  const q = cfg.qLoraRank > 0 ? ["q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight"] : ["q_proj.weight"];
  return [p + "input_layernorm.weight", ...[...q, "kv_a_proj_with_mqa.weight", "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight"].map((n) => a + n),
    ...(cfg.indexer ? indexerTensorNames(l) : [])];
}

/** The FFN tensors of layer l other than routed experts (norm, dense MLP or gate and shared experts). */
function ffnNames(cfg: ModelConfig, l: number): string[] {
  const p = `model.layers.${l}.`;
  const proj = (q: string) => ["gate_proj.weight", "up_proj.weight", "down_proj.weight"].map((n) => q + n);
  if (!isMoeLayer(cfg, l)) return [p + "post_attention_layernorm.weight", ...proj(p + "mlp.")];
  return [p + "post_attention_layernorm.weight", p + "mlp.gate.weight", p + "mlp.gate.e_score_correction_bias",
    ...(cfg.nSharedExperts > 0 ? proj(p + "mlp.shared_experts.") : [])];
}

/** Runs the model over `sequences` (each starting at position 0) and returns logits at every position. */
export async function forward(src: WeightSource, sequences: readonly ArrayLike<number>[], opts: ForwardOptions = {}): Promise<ForwardResult> {
  if (src.config.v4) return forwardV4(src, sequences, opts);
  const cfg = src.config;
  const { tokens, pos, offsets, maxLen, N } = packSequences(cfg, sequences);
  const ctx = new Ctx(src, cfg, opts.ops ?? forwardOps(), Math.max(1, opts.threads ?? availableParallelism()), opts.observer,
    passScratch(cfg, N, opts.scratch));
  if (N === 0) return { logits: new Float32Array(0), offsets, vocab: cfg.vocabSize };
  const ropeTab = ropeTables(cfg, maxLen);

  try {
    if (cfg.nLayers > 0) ctx.prefetch(attentionNames(cfg, 0));
    let h = await embed(ctx, tokens, "model.embed_tokens.weight");
    // Rows that reach the head: after the last attention only those are carried on.
    const out = outputRows(sequences, offsets, opts.logitsFrom);
    let rows = N;
    const trim = () => {
      if (!out) return;
      h = gatherRows(h, out.rows, cfg.dim);
      rows = out.rows.length;
    };
    for (let l = 0; l < cfg.nLayers; l++) {
      const p = `model.layers.${l}.`;
      ctx.prefetch(ffnNames(cfg, l));
      const xn = rmsNorm(h, N, cfg.dim, await ctx.vector(p + "input_layernorm.weight", cfg.dim), cfg.rmsNormEps, ctx.scratch.take(h.length));
      const attn = await attention(ctx, l, xn, N, pos, offsets, ropeTab, opts.v32);
      addInto(h, attn);
      ctx.scratch.release(attn);
      ctx.prefetch(l + 1 < cfg.nLayers ? attentionNames(cfg, l + 1) : ["model.norm.weight"]);
      if (l === cfg.nLayers - 1) trim();
      const x2 = rows === N ? xn : ctx.scratch.take(rows * cfg.dim);
      rmsNorm(h, rows, cfg.dim, await ctx.vector(p + "post_attention_layernorm.weight", cfg.dim), cfg.rmsNormEps, x2);
      const ffn = isMoeLayer(cfg, l)
        ? await moe(ctx, l, x2, rows, opts.onRouting)
        : await mlp(ctx, p + "mlp.", x2, rows, cfg.interDim);
      addInto(h, ffn);
      ctx.scratch.release(ffn, x2, ...(x2 === xn ? [] : [xn]));
      opts.onLayer?.(l);
    }
    if (cfg.nLayers === 0) trim();
    rmsNorm(h, rows, cfg.dim, await ctx.vector("model.norm.weight", cfg.dim), cfg.rmsNormEps);
    if (opts.output === "hidden") {
      ctx.observer?.input(headName(cfg, src), h, rows, cfg.dim);
      opts.onLayer?.(cfg.nLayers);
      return { logits: new Float32Array(0), offsets: out ? out.offsets : offsets, vocab: cfg.vocabSize, hidden: h };
    }
    const logits = await head(ctx, h, rows);
    opts.onLayer?.(cfg.nLayers);
    return { logits, offsets: out ? out.offsets : offsets, vocab: cfg.vocabSize };
  } finally {
    await ctx.drain();
  }
}

async function attention(ctx: Ctx, l: number, x: Float32Array, N: number, pos: Int32Array, offsets: Int32Array,
                         ropeTab: { cos: Float32Array; sin: Float32Array }, v32?: V32ForwardOptions): Promise<Float32Array> {
  const { cfg } = ctx;
  const p = `model.layers.${l}.self_attn.`;
  const H = cfg.nHeads;
  const dn = cfg.qkNopeHeadDim;
  const dr = cfg.qkRopeHeadDim;
  const dqk = qkHeadDim(cfg);
  const dv = cfg.vHeadDim;
  const kvr = cfg.kvLoraRank;
  const dim = cfg.dim;

  let q: Float32Array;
  let selection: SequenceSelection[] | null = null;
  if (cfg.qLoraRank > 0) {
    const [wqa, qNorm, wqb] = await Promise.all([
      ctx.weight(p + "q_a_proj.weight", cfg.qLoraRank, dim),
      ctx.vector(p + "q_a_layernorm.weight", cfg.qLoraRank),
      ctx.weight(p + "q_b_proj.weight", H * dqk, cfg.qLoraRank),
    ]);
    const qa = rmsNorm(ctx.mm(x, wqa, N, dim, cfg.qLoraRank, p + "q_a_proj.weight"), N, cfg.qLoraRank, qNorm, cfg.rmsNormEps);
    q = ctx.mm(qa, wqb, N, cfg.qLoraRank, H * dqk, p + "q_b_proj.weight");
    if (cfg.indexer) {
      selection = await indexerSelect(ctx, l, x, qa, N, pos, offsets, ropeTab, { keepScores: v32?.onIndexer !== undefined, qat: v32?.qat ?? true });
      v32?.onIndexer?.(l, selection);
    }
    ctx.scratch.release(qa);
  } else {
    q = ctx.mm(x, await ctx.weight(p + "q_proj.weight", H * dqk, dim), N, dim, H * dqk, p + "q_proj.weight");
  }
  rope(q, N, H * dqk, dn, H, dqk, dr, pos, ropeTab);

  const [wkva, kvNorm, wkvb, wo] = await Promise.all([
    ctx.weight(p + "kv_a_proj_with_mqa.weight", kvr + dr, dim),
    ctx.vector(p + "kv_a_layernorm.weight", kvr),
    ctx.weight(p + "kv_b_proj.weight", H * (dn + dv), kvr),
    ctx.weight(p + "o_proj.weight", dim, H * dv),
  ]);
  const kva = ctx.mm(x, wkva, N, dim, kvr + dr, p + "kv_a_proj_with_mqa.weight");
  rope(kva, N, kvr + dr, kvr, 1, 0, dr, pos, ropeTab);
  const ckv = rmsNorm(kva, N, kvr, kvNorm, cfg.rmsNormEps, ctx.scratch.take(N * kvr), kvr + dr, kvr);
  const kvb = ctx.mm(ckv, wkvb, N, kvr, H * (dn + dv), p + "kv_b_proj.weight");

  // K = [k_nope(h), k_pe] per head, V = v(h).
  const k = ctx.scratch.take(N * H * dqk);
  const v = ctx.scratch.take(N * H * dv);
  mlaKv(kva, kvb, k, v, N, H, dn, dr, dv, kvr);
  ctx.scratch.release(kva, kvb);
  const o = ctx.scratch.take(N * H * dv);
  if (cfg.indexer && !selection) throw new DeepcastError("DeepSeek-V3.2's indexer needs the query LoRA (q_lora_rank > 0)", { file: ctx.src.description, code: "UNSUPPORTED" });
  if (ctx.observer?.absorbedMla) attendObservingLatent(ctx, ctx.observer, l, q, k, v, ckv, o, N, offsets, selection);
  else attend(ctx, q, k, v, o, offsets, H, dqk, dv, selection);
  ctx.scratch.release(q, k, v, ckv);
  const out = ctx.mm(o, wo, N, H * dv, dim, p + "o_proj.weight");
  ctx.scratch.release(o);
  return out;
}

async function mlp(ctx: Ctx, prefix: string, x: Float32Array, N: number, inter: number): Promise<Float32Array> {
  const dim = ctx.cfg.dim;
  const [w1, w3, w2] = await Promise.all([
    ctx.weight(prefix + "gate_proj.weight", inter, dim),
    ctx.weight(prefix + "up_proj.weight", inter, dim),
    ctx.weight(prefix + "down_proj.weight", dim, inter),
  ]);
  return mlpWith(ctx, prefix, x, N, inter, w1, w3, w2);
}

function mlpWith(ctx: Ctx, prefix: string, x: Float32Array, N: number, inter: number, w1: Matrix, w3: Matrix, w2: Matrix): Float32Array {
  const dim = ctx.cfg.dim;
  const g = ctx.mm(x, w1, N, dim, inter, prefix + "gate_proj.weight");
  const u = ctx.mm(x, w3, N, dim, inter, prefix + "up_proj.weight");
  ctx.ops.siluMul(g, u, ctx.threads);
  const out = ctx.mm(g, w2, N, inter, dim, prefix + "down_proj.weight");
  ctx.scratch.release(g, u);
  return out;
}

/**
 * Causal attention of every sequence: dense (the ops' kernel) unless the indexer selected fewer keys
 * for some query of a sequence; then the rows before the first such query still run dense (so they
 * equal a dense pass bit for bit) and the rest with the mask.
 */
function attend(ctx: Ctx, q: Float32Array, k: Float32Array, v: Float32Array, o: Float32Array, offsets: Int32Array,
                H: number, dqk: number, dv: number, selection: readonly SequenceSelection[] | null): void {
  const scale = softmaxScale(ctx.cfg);
  if (!selection || selection.every((s) => !s.mask)) {
    ctx.ops.attention(q, k, v, o, offsets, H, dqk, dv, scale, ctx.threads);
    return;
  }
  for (let b = 0; b + 1 < offsets.length; b++) {
    const t0 = offsets[b]!;
    const n = offsets[b + 1]! - t0;
    if (n === 0) continue;
    const mask = selection[b]!.mask;
    const dense = mask ? fullRows(mask, n) : n;
    const rows = (x: Float32Array, d: number, m: number) => x.subarray(t0 * H * d, (t0 + m) * H * d);
    if (dense > 0) ctx.ops.attention(rows(q, dqk, dense), rows(k, dqk, dense), rows(v, dv, dense), rows(o, dv, dense), Int32Array.of(0, dense), H, dqk, dv, scale, ctx.threads);
    if (mask && dense < n) maskedAttention(rows(q, dqk, n), rows(k, dqk, n), rows(v, dv, n), rows(o, dv, n), n, mask, H, dqk, dv, scale, dense);
  }
}

/** The leading rows of an [n, n] selection mask that keep every visible key. */
function fullRows(mask: Uint8Array, n: number): number {
  for (let i = 0; i < n; i++) {
    for (let t = 0; t <= i; t++) if (!mask[i * n + t]) return i;
  }
  return n;
}

/**
 * attend() for an observer that wants MLA as llama.cpp runs it (absorbedMla): every head's value is
 * [v_h, c_kv] in one pass (the ops' attentionLatent, or values built for attend() where it is absent
 * or the indexer masks keys), so the same softmax weights give o (the pass's output, the bytes of a
 * plain attend(): each output is its own fma chain) and the latent attention output (weights times the
 * normed c_kv); the observer gets q_nope per head and the latent, per sequence.
 */
function attendObservingLatent(ctx: Ctx, obs: MatmulObserver, l: number, q: Float32Array, k: Float32Array, v: Float32Array, ckv: Float32Array,
                               o: Float32Array, N: number, offsets: Int32Array, selection: readonly SequenceSelection[] | null): void {
  const { cfg } = ctx;
  const H = cfg.nHeads;
  const dn = cfg.qkNopeHeadDim;
  const dqk = qkHeadDim(cfg);
  const dv = cfg.vHeadDim;
  const kvr = cfg.kvLoraRank;
  const w = dv + kvr;
  // latent [N, H, kvr]: attention over c_kv with each head's weights
  const latentAll = ctx.scratch.take(N * H * kvr);
  if (ctx.ops.attentionLatent && (!selection || selection.every((s) => !s.mask))) {
    ctx.ops.attentionLatent(q, k, v, ckv, o, latentAll, offsets, H, dqk, dv, softmaxScale(cfg), ctx.threads);
  } else {
    // values [v_h, c_kv] per head in one attend() call (masks included), split afterwards
    const vx = new Float32Array(N * H * w);
    copyRows(vx, 0, w, v, 0, dv, N * H, dv);
    for (let hh = 0; hh < H; hh++) copyRows(vx, hh * w + dv, H * w, ckv, 0, kvr, N, kvr);
    const ox = new Float32Array(N * H * w);
    attend(ctx, q, k, vx, ox, offsets, H, dqk, w, selection);
    copyRows(o, 0, dv, ox, 0, w, N * H, dv);
    copyRows(latentAll, 0, kvr, ox, dv, w, N * H, kvr);
  }
  for (let b = 0; b + 1 < offsets.length; b++) {
    const t0 = offsets[b]!;
    const n = offsets[b + 1]! - t0;
    if (n === 0) continue;
    const qNope = new Float32Array(n * H * dn);
    copyRows(qNope, 0, dn, q, t0 * H * dqk, dqk, n * H, dn);
    obs.absorbedMla!(l, qNope, latentAll.subarray(t0 * H * kvr, (t0 + n) * H * kvr), n);
  }
  ctx.scratch.release(latentAll);
}

/**
 * out[0..m) = the indices of the m largest of arr[0..n), largest first, equal values by lower index
 * first: the first m of a stable descending sort (model.py's topk order), by insertion in O(n m).
 */
function topOrder(arr: Float32Array, n: number, m: number, out: Int32Array): void {
  let have = 0;
  for (let i = 0; i < n; i++) {
    const v = arr[i]!;
    if (have === m && !(v > arr[out[m - 1]!]!)) continue;
    let p = have < m ? have++ : m - 1;
    while (p > 0 && arr[out[p - 1]!]! < v) {
      out[p] = out[p - 1]!;
      p--;
    }
    out[p] = i;
  }
}

/** model.py's Gate: returns expert ids and combine weights for every token. */
export function route(cfg: ModelConfig, logits: Float32Array, N: number, bias: Float32Array | null, layer = -1): RoutingInfo {
  const E = cfg.nRoutedExperts;
  const K = cfg.nActivatedExperts;
  const G = cfg.nExpertGroups;
  const per = E / G;
  const indices = new Int32Array(N * K);
  const weights = new Float32Array(N * K);
  const expertMargin = new Float32Array(N);
  const groupMargin = new Float32Array(N);
  const s = new Float32Array(E);
  const b = new Float32Array(E);
  const gs = new Float32Array(G);
  const go = new Int32Array(G);
  const eo = new Int32Array(Math.min(K + 1, E));
  const top2 = new Int32Array(2);
  for (let t = 0; t < N; t++) {
    const lg = logits.subarray(t * E, (t + 1) * E);
    if (cfg.scoreFunc === "sigmoid") {
      for (let e = 0; e < E; e++) s[e] = 1 / (1 + Math.exp(-lg[e]!));
    } else {
      let mx = -Infinity;
      for (let e = 0; e < E; e++) mx = Math.max(mx, lg[e]!);
      let sum = 0;
      for (let e = 0; e < E; e++) sum += Math.exp(lg[e]! - mx);
      for (let e = 0; e < E; e++) s[e] = Math.exp(lg[e]! - mx) / sum;
    }
    for (let e = 0; e < E; e++) b[e] = bias ? s[e]! + bias[e]! : s[e]!;
    groupMargin[t] = Infinity;
    if (G > 1) {
      for (let g = 0; g < G; g++) {
        const grp = b.subarray(g * per, (g + 1) * per);
        if (bias) {
          topOrder(grp, per, 2, top2);
          gs[g] = per >= 2 ? grp[top2[0]!]! + grp[top2[1]!]! : grp[top2[0]!]!;
        } else {
          gs[g] = Math.max(...grp);
        }
      }
      topOrder(gs, G, G, go);
      if (cfg.nLimitedGroups < G) groupMargin[t] = gs[go[cfg.nLimitedGroups - 1]!]! - gs[go[cfg.nLimitedGroups]!]!;
      for (let r = cfg.nLimitedGroups; r < G; r++) b.fill(-Infinity, go[r]! * per, (go[r]! + 1) * per);
    }
    topOrder(b, E, eo.length, eo);
    const kth = b[eo[K - 1]!]!;
    const next = K < E ? b[eo[K]!]! : -Infinity;
    expertMargin[t] = next === -Infinity ? Infinity : kth - next;
    let sum = 0;
    for (let k = 0; k < K; k++) {
      const e = eo[k]!;
      indices[t * K + k] = e;
      weights[t * K + k] = s[e]!;
      sum = f(sum + s[e]!);
    }
    const normalize = cfg.scoreFunc === "sigmoid" || cfg.normTopkProb;
    for (let k = 0; k < K; k++) {
      const w = normalize ? f(weights[t * K + k]! / sum) : weights[t * K + k]!;
      weights[t * K + k] = f(w * cfg.routeScale);
    }
  }
  return { layer, tokens: N, topk: K, indices, weights, expertMargin, groupMargin };
}

async function moe(ctx: Ctx, l: number, x: Float32Array, N: number, onRouting?: (r: RoutingInfo) => void): Promise<Float32Array> {
  const { cfg, src } = ctx;
  const p = `model.layers.${l}.mlp.`;
  const E = cfg.nRoutedExperts;
  const dim = cfg.dim;
  const inter = cfg.moeInterDim;
  const gate = await ctx.weight(p + "gate.weight", E, dim);
  const biasName = p + "gate.e_score_correction_bias";
  const bias = src.has(biasName) ? await ctx.vector(biasName, E) : null;
  const scores = ctx.mm(x, gate, N, dim, E, p + "gate.weight");
  const r = route(cfg, scores, N, bias, l);
  ctx.scratch.release(scores);
  onRouting?.(r);

  // Tokens (and their slot k) per expert, in token order: a counting sort of the N*K slots.
  const K = r.topk;
  const count = new Int32Array(E + 1);
  for (let i = 0; i < N * K; i++) count[r.indices[i]! + 1]!++;
  for (let e = 0; e < E; e++) count[e + 1]! += count[e]!;
  const slotsByExpert = new Int32Array(N * K);
  const fill = count.slice(0, E);
  for (let i = 0; i < N * K; i++) slotsByExpert[fill[r.indices[i]!]!++] = i;
  const used: number[] = [];
  for (let e = 0; e < E; e++) if (count[e + 1]! > count[e]!) used.push(e);
  const load = (e: number) => Promise.all([
    ctx.weight(`${p}experts.${e}.gate_proj.weight`, inter, dim),
    ctx.weight(`${p}experts.${e}.up_proj.weight`, inter, dim),
    ctx.weight(`${p}experts.${e}.down_proj.weight`, dim, inter),
  ]);

  const y = ctx.scratch.takeZeroed(N * dim);
  await streamExperts(used, load, (e, [w1, w3, w2]) => {
    const slots = slotsByExpert.subarray(count[e]!, count[e + 1]!);
    const rows = new Int32Array(slots.length);
    const scale = new Float32Array(slots.length);
    for (let j = 0; j < slots.length; j++) {
      rows[j] = Math.floor(slots[j]! / K);
      scale[j] = r.weights[slots[j]!]!;
    }
    const xe = gatherRows(x, rows, dim, ctx.scratch.take(slots.length * dim));
    const out = mlpWith(ctx, `${p}experts.${e}.`, xe, slots.length, inter, w1, w3, w2);
    scatterAddScaled(y, out, rows, scale, dim);
    ctx.scratch.release(xe, out);
  });
  if (cfg.nSharedExperts > 0) {
    const z = await mlp(ctx, p + "shared_experts.", x, N, cfg.nSharedExperts * inter);
    addInto(y, z);
    ctx.scratch.release(z);
  }
  return y;
}


export { headName };
