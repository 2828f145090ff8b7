/**
 * What the DeepSeek-V4 pass (../forward-v4.ts) holds at its peak, as ../forward-memory.ts estimates the
 * V3 pass (float32 everywhere): one layer's attention sublayer (compressor and indexer included) and
 * the next one's prefetch, or the FFN's router, shared expert and two routed experts (one computing,
 * one prefetched) with a hash table; per token the hc streams (old, new and the sublayer's input)
 * plus the larger sublayer's intermediates.
 */
import type { ModelConfig } from "../config.js";

const F32 = 4;

export function forwardWeightBytesV4(cfg: ModelConfig): number {
  const v = cfg.v4!;
  const H = cfg.nHeads;
  const dim = cfg.dim;
  const mix = (2 + v.hcMult) * v.hcMult * v.hcMult * dim;
  let attn = 0;
  for (let l = 0; l < cfg.nLayers; l++) {
    const r = v.compressRatios[l] ?? 0;
    const comp = (d: number, coff: number) => 2 * coff * d * dim + r * coff * d + d;
    let a = mix + cfg.qLoraRank * dim + H * v.headDim * cfg.qLoraRank + v.headDim * dim + H * v.headDim * v.oLoraRank + dim * v.oGroups * v.oLoraRank;
    if (r) a += comp(v.headDim, r === 4 ? 2 : 1);
    if (r === 4) a += v.indexHeads * v.indexHeadDim * cfg.qLoraRank + v.indexHeads * dim + comp(v.indexHeadDim, 2);
    attn = Math.max(attn, a);
  }
  const ffn = mix + cfg.nRoutedExperts * dim + (2 + cfg.nSharedExperts) * 3 * cfg.moeInterDim * dim + (v.hashLayers ? cfg.vocabSize * cfg.nActivatedExperts : 0);
  return F32 * (2 * attn + ffn);
}

export function forwardBytesPerTokenV4(cfg: ModelConfig): number {
  const v = cfg.v4!;
  const H = cfg.nHeads;
  const streams = 3 * v.hcMult * cfg.dim;
  const attn = 2 * cfg.dim + 2 * cfg.qLoraRank + 2 * H * v.headDim + v.headDim + 2 * 2 * 2 * v.headDim
    + v.indexHeads * v.indexHeadDim + 2 * 2 * 2 * v.indexHeadDim + 2 * v.oGroups * v.oLoraRank;
  const moe = 3 * cfg.dim + cfg.nRoutedExperts + 4 * cfg.nActivatedExperts + 2 * cfg.nSharedExperts * cfg.moeInterDim + 2 * (cfg.dim + cfg.moeInterDim);
  return F32 * (streams + Math.max(attn, moe));
}
