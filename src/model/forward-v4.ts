/**
 * Reference forward pass of the DeepSeek-V4 architecture, following DeepSeek's later official
 * `inference/model.py` (DeepSeek-V4-Flash@60d8d707: Transformer.forward in prefill) in float32, with
 * logits at every position (perplexity) and the MTP module not run:
 *
 *   streams = embed[tokens] repeated hc_mult times                        [tokens, hc, dim]
 *   per layer:  streams = HC(attention, attn_norm);  streams = HC(MoE, ffn_norm)     (./v4/hc.ts)
 *   logits = head(norm(hc_head(streams)))
 *
 * The pieces live in ./v4/: hyper-connections with Sinkhorn (hc.ts), attention with the sliding
 * window, sinks, compressed entries and grouped output LoRA (attention.ts), the compressor
 * (compressor.ts), the indexer (indexer.ts), sqrt-softplus / hash routing and clamped SwiGLU experts
 * (moe.ts), the RoPE flavours (rope.ts) and model.py's QAT simulations (qat.ts; on by default, off
 * with opts.v4.qat = false as llama.cpp runs the model).
 *
 * As the V3 pass (./forward.ts, which dispatches here for a V4 config): all sequences of a batch go
 * through one layer at a time, its weights read from the WeightSource and dropped (routed experts one
 * at a time, the next one prefetched), so memory is one layer plus the activations.
 */
import { availableParallelism } from "node:os";
import { Ctx, embed, head, outputRows, packSequences, passScratch } from "./forward-context.js";
import type { ForwardOptions, ForwardResult } from "./forward.js";
import { forwardOps, gatherRows, rmsNorm } from "./ops.js";
import { attentionV4 } from "./v4/attention.js";
import { hcCombine, hcHeadWeights, hcPost, hcSplitSinkhorn, rmsRows, scaleByRms, type HcSplit } from "./v4/hc.js";
import { moeV4 } from "./v4/moe.js";
import { v4RopeTables } from "./v4/rope.js";
import type { WeightSource } from "./weights.js";
import type { ModelConfig } from "./config.js";

/** The tensors of layer l's attention sublayer (HC, norm, attention, compressor, indexer), for prefetching. */
function attentionNames(ratios: readonly number[], l: number): string[] {
  const p = `layers.${l}.`;
  const a = `${p}attn.`;
  const out = [`${p}hc_attn_fn`, `${p}hc_attn_scale`, `${p}hc_attn_base`, `${p}attn_norm.weight`,
    ...["wq_a.weight", "q_norm.weight", "wq_b.weight", "wkv.weight", "kv_norm.weight", "attn_sink", "wo_a.weight", "wo_b.weight"].map((n) => a + n)];
  const comp = (c: string) => ["wkv.weight", "wgate.weight", "norm.weight"].map((n) => c + n);
  if (ratios[l]) out.push(...comp(`${a}compressor.`));
  if (ratios[l] === 4) out.push(`${a}indexer.wq_b.weight`, `${a}indexer.weights_proj.weight`, ...comp(`${a}indexer.compressor.`));
  return out;
}

/** The FFN sublayer's tensors other than routed experts. */
function ffnNames(l: number): string[] {
  const p = `layers.${l}.`;
  return [`${p}hc_ffn_fn`, `${p}hc_ffn_scale`, `${p}hc_ffn_base`, `${p}ffn_norm.weight`, `${p}ffn.gate.weight`, `${p}ffn.gate.bias`,
    ...["w1", "w3", "w2"].map((w) => `${p}ffn.shared_experts.${w}.weight`)];
}

/**
 * The HF names of every tensor the V4 pass may read for `cfg`, layer by layer in reading order (a hash
 * layer's gate.bias and a missing optional tensor listed as `has` decides): what a WeightSource of
 * another format (GGUF) must serve under these names.
 */
export function forwardTensorNamesV4(cfg: ModelConfig, has: (name: string) => boolean = () => true): string[] {
  const v = cfg.v4!;
  const out = ["embed.weight"];
  for (let l = 0; l < cfg.nLayers; l++) {
    out.push(...attentionNames(v.compressRatios, l), `layers.${l}.attn.compressor.ape`, `layers.${l}.attn.indexer.compressor.ape`);
    out.push(...ffnNames(l));
    if (l < v.hashLayers) out.push(`layers.${l}.ffn.gate.tid2eid`);
    for (let e = 0; e < cfg.nRoutedExperts; e++) out.push(...["w1", "w3", "w2"].map((w) => `layers.${l}.ffn.experts.${e}.${w}.weight`));
  }
  out.push("hc_head_fn", "hc_head_scale", "hc_head_base", "norm.weight", "head.weight");
  return out.filter((n) => {
    const r = /^layers\.(\d+)\.attn\.(indexer\.)?compressor\.ape$/.exec(n);
    if (r) return (v.compressRatios[Number(r[1])] ?? 0) !== 0 && (!r[2] || v.compressRatios[Number(r[1])] === 4);
    return !n.endsWith(".ffn.gate.bias") || has(n);
  });
}

/** HC before a sublayer: the Sinkhorn split of the streams X [rows, hc, dim] and the sublayer's input. */
async function hcPre(ctx: Ctx, p: string, X: Float32Array, rows: number): Promise<{ x: Float32Array; split: HcSplit }> {
  const { cfg } = ctx;
  const v = cfg.v4!;
  const hc = v.hcMult;
  const mix = (2 + hc) * hc;
  const [fn, scale, base] = await Promise.all([ctx.weight(`${p}_fn`, mix, hc * cfg.dim), ctx.vector(`${p}_scale`, 3), ctx.vector(`${p}_base`, mix)]);
  // llama-imatrix sees hc_fn multiply the RMS-normed streams (deepseek4.cpp build_hc_pre): report those
  if (ctx.observer) ctx.observer.input(`${p}_fn`, rmsRows(X, rows, hc * cfg.dim, cfg.rmsNormEps), rows, hc * cfg.dim);
  const m = ctx.mm(X, fn, rows, hc * cfg.dim, mix);
  scaleByRms(m, X, rows, hc * cfg.dim, mix, cfg.rmsNormEps);
  const split = hcSplitSinkhorn(m, rows, scale, base, hc, v.hcSinkhornIters, v.hcEps);
  return { x: hcCombine(X, split.pre, rows, hc, cfg.dim), split };
}

export async function forwardV4(src: WeightSource, sequences: readonly ArrayLike<number>[], opts: ForwardOptions = {}): Promise<ForwardResult> {
  const cfg = src.config;
  const v = cfg.v4!;
  const v4opts = opts.v4 ?? {};
  const { tokens, pos, offsets, maxLen, N } = packSequences(cfg, sequences);
  const ctx = new Ctx(src, cfg, opts.ops ?? forwardOps(), Math.max(1, opts.threads ?? availableParallelism()), opts.observer,
    passScratch(cfg, N, opts.scratch));
  if (N === 0) return { logits: new Float32Array(0), offsets, vocab: cfg.vocabSize };
  const hc = v.hcMult;
  const dim = cfg.dim;
  const ropes = v4RopeTables(cfg, maxLen);
  try {
    if (cfg.nLayers > 0) ctx.prefetch(attentionNames(v.compressRatios, 0));
    const e = await embed(ctx, tokens, "embed.weight");
    let X: Float32Array = new Float32Array(N * hc * dim);
    for (let t = 0; t < N; t++) for (let j = 0; j < hc; j++) X.set(e.subarray(t * dim, (t + 1) * dim), (t * hc + j) * dim);
    const out = outputRows(sequences, offsets, opts.logitsFrom);
    let rows = N;
    let tok = tokens;
    for (let l = 0; l < cfg.nLayers; l++) {
      const p = `layers.${l}.`;
      ctx.prefetch(ffnNames(l));
      const a = await hcPre(ctx, `${p}hc_attn`, X, N);
      rmsNorm(a.x, N, dim, await ctx.vector(`${p}attn_norm.weight`, dim), cfg.rmsNormEps);
      X = hcPost(await attentionV4(ctx, l, a.x, N, pos, offsets, ropes, v4opts), X, a.split, N, hc, dim);
      ctx.prefetch(l + 1 < cfg.nLayers ? attentionNames(v.compressRatios, l + 1) : ["hc_head_fn", "hc_head_scale", "hc_head_base", "norm.weight"]);
      if (l === cfg.nLayers - 1 && out) {
        // After the last attention only the rows that reach the head are carried on.
        X = gatherRows(X, out.rows, hc * dim);
        tok = Int32Array.from(out.rows, (r) => tokens[r]!);
        rows = out.rows.length;
      }
      const fpre = await hcPre(ctx, `${p}hc_ffn`, X, rows);
      rmsNorm(fpre.x, rows, dim, await ctx.vector(`${p}ffn_norm.weight`, dim), cfg.rmsNormEps);
      X = hcPost(await moeV4(ctx, l, fpre.x, rows, tok, v4opts, opts.onRouting), X, fpre.split, rows, hc, dim);
      opts.onLayer?.(l);
    }
    if (cfg.nLayers === 0 && out) {
      X = gatherRows(X, out.rows, hc * dim);
      rows = out.rows.length;
    }
    // hc_head: mix the streams with sigmoid weights, then the final norm.
    const [fn, scale, base] = await Promise.all([ctx.weight("hc_head_fn", hc, hc * dim), ctx.vector("hc_head_scale", 1), ctx.vector("hc_head_base", hc)]);
    const m = ctx.mm(X, fn, rows, hc * dim, hc, "hc_head_fn");
    scaleByRms(m, X, rows, hc * dim, hc, cfg.rmsNormEps);
    const h = hcCombine(X, hcHeadWeights(m, rows, scale[0]!, base, hc, v.hcEps), rows, hc, dim);
    rmsNorm(h, rows, dim, await ctx.vector("norm.weight", dim), cfg.rmsNormEps);
    const offs = out ? out.offsets : offsets;
    if (opts.output === "hidden") {
      ctx.observer?.input("head.weight", h, rows, dim);
      opts.onLayer?.(cfg.nLayers);
      return { logits: new Float32Array(0), offsets: offs, vocab: cfg.vocabSize, hidden: h };
    }
    const logits = await head(ctx, h, rows);
    opts.onLayer?.(cfg.nLayers);
    return { logits, offsets: offs, vocab: cfg.vocabSize };
  } finally {
    await ctx.drain();
  }
}
