/**
 * What the layer-streamed forward pass (forward.ts) holds at its peak, to choose how many sequences
 * one pass may carry under a memory budget. Estimates from the config, float32 everywhere:
 *
 *  - weights: the most the pass holds at once, as float32: one attention block (plus the next
 *    block's prefetch while the FFN runs) or a dense MLP, or in a MoE layer two routed experts
 *    (one computing, one prefetched), the router and the shared experts;
 *  - activations per token: the residual and normed input (2·dim) plus the largest block's
 *    intermediates (MLA: q, k, v, kv_b output, attention output; MLP: gate/up; MoE: per-expert
 *    copies, shared experts, routing).
 *
 * Checked against measured peak RSS by test/e2e (imatrix on a synthetic checkpoint with a >1 GB layer).
 */
import { isMoeLayer, qkHeadDim, type ModelConfig } from "./config.js";
import { forwardBytesPerTokenV4, forwardWeightBytesV4 } from "./v4/memory.js";

const F32 = 4;

/** Float32 bytes of the weights the pass holds at once at most. */
export function forwardWeightBytes(cfg: ModelConfig): number {
  if (cfg.v4) return forwardWeightBytesV4(cfg);
  const H = cfg.nHeads;
  const q = cfg.qLoraRank > 0 ? cfg.qLoraRank * cfg.dim + H * qkHeadDim(cfg) * cfg.qLoraRank : H * qkHeadDim(cfg) * cfg.dim;
  const ix = cfg.indexer ? (cfg.indexer.nHeads * cfg.indexer.headDim * cfg.qLoraRank + (cfg.indexer.headDim + cfg.indexer.nHeads) * cfg.dim) : 0;
  const attn = q + (cfg.kvLoraRank + cfg.qkRopeHeadDim) * cfg.dim + H * (cfg.qkNopeHeadDim + cfg.vHeadDim) * cfg.kvLoraRank + cfg.dim * H * cfg.vHeadDim + ix;
  let ffn = 0;
  for (let l = 0; l < cfg.nLayers; l++) {
    const f = isMoeLayer(cfg, l)
      ? 2 * 3 * cfg.moeInterDim * cfg.dim + cfg.nRoutedExperts * cfg.dim + 3 * cfg.nSharedExperts * cfg.moeInterDim * cfg.dim
      : 3 * cfg.interDim * cfg.dim;
    ffn = Math.max(ffn, f);
  }
  // the attention block of layer l+1 is prefetched while layer l's FFN runs
  return F32 * (2 * attn + ffn);
}

/** Float32 bytes of activations per token of a pass (the largest block's intermediates). */
export function forwardBytesPerToken(cfg: ModelConfig): number {
  if (cfg.v4) return forwardBytesPerTokenV4(cfg);
  const H = cfg.nHeads;
  const dqk = qkHeadDim(cfg);
  // V3.2's indexer: q [heads, D], k [D], weights [heads] and their scales per token (its [n, n] mask per sequence, a byte per pair, is not counted)
  const ix = cfg.indexer ? cfg.indexer.nHeads * (cfg.indexer.headDim + 2) + cfg.indexer.headDim + 1 : 0;
  const attn = H * (2 * dqk + cfg.qkNopeHeadDim + 2 * cfg.vHeadDim) + cfg.qLoraRank + 2 * (cfg.kvLoraRank + cfg.qkRopeHeadDim) + cfg.dim + ix;
  const mlp = 2 * cfg.interDim + cfg.dim;
  const K = cfg.nActivatedExperts;
  const moe = cfg.nRoutedExperts > 0
    ? 2 * cfg.dim + cfg.nRoutedExperts + 4 * K + 2 * cfg.nSharedExperts * cfg.moeInterDim + 2 * (cfg.dim + cfg.moeInterDim)
    : 0;
  return F32 * (2 * cfg.dim + Math.max(attn, mlp, moe));
}
