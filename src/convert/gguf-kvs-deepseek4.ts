/**
 * The metadata convert_hf_to_gguf.py (llama.cpp v0.4.0, DeepseekV4Model) writes for a DeepSeek-V4
 * checkpoint, in its order: general.architecture, the default chat template (added in the class's
 * __init__), general.*, TextModel's hparams with general.file_type = MOSTLY_MXFP4_MOE, V4's own keys,
 * general.quantization_version, then the tokenizer.
 */
import { readFileSync } from "node:fs";
import { DeepcastError } from "../errors.js";
import { archKey, Keys } from "../formats/gguf-keys.js";
import { kv, type GgufKV } from "../io/gguf-kv.js";
import { generalKvs, textModelKvs, type Deepseek2KvOptions, type ParamCounts } from "./gguf-kvs.js";
import { tokenizerKvs } from "./gguf-tokenizer.js";
import type { HfModelFiles } from "./hf-model-files.js";
import { pyJsonIsFloat } from "./python-compat.js";

export type Deepseek4KvOptions = Deepseek2KvOptions;

const FILE_TYPE_MXFP4_MOE = 38;

/** The default template convert adds: the 0731 one when "0731" is in the model folder name (or HF id). */
export function deepseek4DefaultTemplate(dirName: string | undefined): string {
  const file = (dirName ?? "").includes("0731") ? "deepseek-ai-DeepSeek-V4-Flash-0731.jinja" : "deepseek-ai-DeepSeek-V4.jinja";
  return readFileSync(new URL(`../../formats/templates/${file}`, import.meta.url), "utf8");
}

export function buildDeepseek4Kvs(
  files: HfModelFiles,
  opts: Deepseek4KvOptions,
  params: ParamCounts,
  d: { blockCount: number; mtpOnly: boolean; arch: string },
): GgufKV[] {
  const A = d.arch;
  const h = { ...files.config };
  const b = generalKvs(files, opts, params, A, [kv.str(Keys.Tokenizer.CHAT_TEMPLATE, deepseek4DefaultTemplate(files.dirName))]);
  const { add, u32, f32 } = b;
  textModelKvs(b, h, A, d.blockCount, FILE_TYPE_MXFP4_MOE);

  const need = (key: string) => {
    if (!(key in h) || h[key] === null) throw new DeepcastError(`config.json has no ${key}`, { file: "config.json", code: "CONFIG_MISMATCH" });
    return h[key];
  };
  const K = (key: string) => archKey(key, A);
  u32(K(Keys.Rope.DIMENSION_COUNT), need("qk_rope_head_dim"));
  u32(K(Keys.Attention.Q_LORA_RANK), need("q_lora_rank"));
  u32(K(Keys.Attention.SLIDING_WINDOW), need("sliding_window"));
  u32(K(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), need("moe_intermediate_size"));
  u32(K(Keys.LLM.EXPERT_SHARED_COUNT), need("n_shared_experts"));
  f32(K(Keys.LLM.EXPERT_WEIGHTS_SCALE), need("routed_scaling_factor"));
  const norm = need("norm_topk_prob");
  if (typeof norm !== "boolean") throw new DeepcastError("config.json: norm_topk_prob must be true or false", { file: "config.json", code: "CONFIG_MISMATCH" });
  add(kv.bool(K(Keys.LLM.EXPERT_WEIGHTS_NORM), norm));
  // add_array infers the element type from the Python value: 10.0 -> FLOAT32, 10 -> INT32
  const limit = need("swiglu_limit");
  if (typeof limit !== "number") throw new DeepcastError("config.json: swiglu_limit is not a number", { file: "config.json", code: "CONFIG_MISMATCH" });
  const limitType = files.configText === undefined || pyJsonIsFloat(files.configText, "swiglu_limit") ? "FLOAT32" : "INT32";
  const clamp = Array.from({ length: d.blockCount }, () => limit);
  add(kv.arr(K(Keys.LLM.SWIGLU_CLAMP_EXP), limitType, clamp));
  add(kv.arr(K(Keys.LLM.SWIGLU_CLAMP_SHEXP), limitType, clamp));
  u32(K(Keys.Indexer.HEAD_COUNT), need("index_n_heads"));
  u32(K(Keys.Indexer.KEY_LENGTH), need("index_head_dim"));
  u32(K(Keys.Indexer.TOP_K), need("index_topk"));
  u32(K(Keys.Attention.OUTPUT_GROUP_COUNT), need("o_groups"));
  u32(K(Keys.Attention.OUTPUT_LORA_RANK), need("o_lora_rank"));
  const ratios = need("compress_ratios");
  if (!Array.isArray(ratios) || !ratios.every((r) => Number.isInteger(r))) {
    throw new DeepcastError("config.json: compress_ratios must be a list of integers", { file: "config.json", code: "CONFIG_MISMATCH" });
  }
  add(kv.arr(K(Keys.Attention.COMPRESS_RATIOS), "INT32", ratios as number[]));
  f32(K(Keys.Attention.COMPRESS_ROPE_FREQ_BASE), need("compress_rope_theta"));
  u32(K(Keys.HyperConnection.COUNT), need("hc_mult"));
  u32(K(Keys.HyperConnection.SINKHORN_ITERATIONS), need("hc_sinkhorn_iters"));
  f32(K(Keys.HyperConnection.EPSILON), need("hc_eps"));
  u32(K(Keys.LLM.HASH_LAYER_COUNT), need("num_hash_layers"));
  const hidden = need("hidden_size");
  const hc = need("hc_mult");
  if (typeof hidden !== "number" || typeof hc !== "number") throw new DeepcastError("config.json: hidden_size and hc_mult must be numbers", { file: "config.json" });
  u32(K(Keys.LLM.EMBEDDING_LENGTH_OUT), hidden * hc);
  const nextn = typeof h.num_nextn_predict_layers === "number" ? h.num_nextn_predict_layers : 0;
  if (d.mtpOnly && nextn > 0) u32(K(Keys.LLM.NEXTN_PREDICT_LAYERS), nextn);

  add(kv.u32(Keys.General.QUANTIZATION_VERSION, 2));
  for (const e of tokenizerKvs(files, opts.tokenizerPre ?? "deepseek-v3", typeof h.vocab_size === "number" ? h.vocab_size : undefined)) add(e);
  return b.kvs;
}
