/**
 * Under which GGUF tensor llama-imatrix (v0.4.0, tools/imatrix/imatrix.cpp) files the input of each
 * DeepSeek-V4 weight when it runs a `deepseek4` model (src/models/deepseek4.cpp): every MUL_MAT /
 * MUL_MAT_ID whose weight is a `blk.*` tensor, named through formats/deepseek4-gguf.json.
 *
 *  - one matrix, one count: attn_q_a, attn_q_b, attn_kv, attn_output_b, attn_compressor_{kv,gate},
 *    indexer.attn_q_b, indexer.proj, indexer_compressor_{kv,gate}, ffn_gate_inp (in the hash layers
 *    too: their routing weights are the router's scores), ffn_{gate,up,down}_shexp, and
 *    hc_{attn,ffn}_fn, whose input in llama.cpp is the flattened hc streams RMS-normalized without a
 *    weight (build_hc_pre: mul_mat(hc_fn, rms_norm(flat)); model.py's X fn^T * rsqrt(mean(X^2)+eps));
 *  - attn_output_a: a 3-D MUL_MAT of the o_groups matrices of the file's 2-D tensor against the
 *    de-roped attention output split by group; llama-imatrix keeps [o_groups x H*head_dim/o_groups]
 *    sums (the output row as it is, group after group) and ONE count. The forward pass reports that
 *    row whole, once (`sideBySide`);
 *  - routed experts ffn_{gate,up,down}_exps: per expert; ffn_down_exps' input is silu(gate)*up
 *    clamped, WITHOUT the routing weight (llama.cpp's build_moe_ffn scales after the down projection;
 *    model.py before it, the same product);
 *  - never: output_hc_fn (not `blk.*`), output (only with --process-output), token_embd (a row
 *    lookup), ape, norms, sinks, hc bases and scales, tid2eid (no matrix multiply).
 */
import { deepseek4Format } from "../formats/deepseek4-names.js";
import { namePattern } from "../formats/deepseek2-names.js";
import type { ModelConfig } from "./config.js";

/** Where one weight's input is counted (ImatrixCollector's entry for it). */
export interface ImatrixTarget {
  gguf: string;
  /** Matrix (expert) index within the entry, and the matrices it has (values). */
  mat: number;
  nMat: number;
  /** Counts kept per matrix (experts) or one for all (dense). */
  perMatrixCount: boolean;
  /** One input row holds all nMat matrices' inputs side by side (a grouped 3-D MUL_MAT): one count. */
  sideBySide?: boolean;
}

/** The weights deepseek4.cpp multiplies (HF names after `layers.{bid}.`; routed experts aside). */
const MULTIPLIED = [
  "hc_attn_fn", "hc_ffn_fn",
  "attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight", "attn.wo_b.weight",
  "attn.compressor.wkv.weight", "attn.compressor.wgate.weight",
  "attn.indexer.wq_b.weight", "attn.indexer.weights_proj.weight", "attn.indexer.compressor.wkv.weight", "attn.indexer.compressor.wgate.weight",
  "ffn.gate.weight", "ffn.shared_experts.w1.weight", "ffn.shared_experts.w2.weight", "ffn.shared_experts.w3.weight",
];
/** The HF weight grouped by llama.cpp into a 3-D MUL_MAT of o_groups matrices. */
const GROUPED = "attn.wo_a.weight";
const HEAD = "head.weight";

interface Rules {
  layer: Map<string, string>;
  layerRe: RegExp;
  expertRe: RegExp;
  expertGguf: Map<string, string>;
}

let rulesCache: Rules | undefined;
function rules(): Rules {
  if (rulesCache) return rulesCache;
  const fmt = deepseek4Format();
  rulesCache = {
    layer: new Map(MULTIPLIED.map((hf) => {
      const g = fmt.layer[hf];
      if (g === undefined) throw new Error(`internal: formats/deepseek4-gguf.json has no ${hf}`);
      return [hf, g] as const;
    })),
    layerRe: /^layers\.(\d+)\.(.+)$/,
    expertRe: new RegExp(namePattern(fmt.experts.pattern.replace("{part}", "weight")).source.replace("{proj}", "(?<proj>[^.]+)")),
    expertGguf: new Map(fmt.experts.expertOrder),
  };
  return rulesCache;
}

/**
 * The entry a DeepSeek-V4 weight's input goes to; null when llama-imatrix does not collect it;
 * undefined when the model is not DeepSeek-V4 (no `v4` part in its config).
 */
export function deepseek4ImatrixTarget(weight: string, cfg: ModelConfig, processOutput: boolean): ImatrixTarget | null | undefined {
  if (!cfg.v4) return undefined;
  const R = rules();
  if (weight === HEAD) return processOutput ? { gguf: "output.weight", mat: 0, nMat: 1, perMatrixCount: false } : null;
  const ex = R.expertRe.exec(weight);
  if (ex) {
    const g = R.expertGguf.get(ex.groups!.proj!);
    if (g === undefined) return null;
    return { gguf: `blk.${ex.groups!.bid}.${g}`, mat: Number(ex.groups!.xid), nMat: cfg.nRoutedExperts, perMatrixCount: true };
  }
  const m = R.layerRe.exec(weight);
  if (!m) return null;
  const g = R.layer.get(m[2]!);
  if (g === undefined) return null;
  const gguf = `blk.${m[1]}.${g}`;
  if (m[2] === GROUPED) return { gguf, mat: 0, nMat: cfg.v4.oGroups, perMatrixCount: false, sideBySide: true };
  return { gguf, mat: 0, nMat: 1, perMatrixCount: false };
}
