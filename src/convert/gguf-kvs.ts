/**
 * The metadata convert_hf_to_gguf.py (llama.cpp v0.4.0) writes for a DeepSeek-V2/V3 checkpoint, in its
 * order: general.* (with gguf-py's Metadata heuristics for the name), the hparams of TextModel and
 * DeepseekV2Model, then the tokenizer (./gguf-tokenizer.ts). Keys come from src/formats/gguf-keys.ts.
 */
import { DeepcastError } from "../errors.js";
import { deepseek2Format } from "../formats/deepseek2-names.js";
import { archKey, Keys } from "../formats/gguf-keys.js";
import { kv, setKvInPlace, type GgufKV } from "../io/gguf-kv.js";
import { idToTitle, modelIdComponents, sizeLabel, type ModelIdComponents } from "./gguf-naming.js";
import { tokenizerKvs } from "./gguf-tokenizer.js";
import { findHparam, type HfModelFiles } from "./hf-model-files.js";
import { isObj, truthy } from "./python-compat.js";

/** llama_ftype of a BF16 file. */
const FILE_TYPE_BF16 = 32;

/** gguf_writer.get_total_parameter_count. */
export interface ParamCounts {
  total: number;
  shared: number;
  expert: number;
  expertCount: number;
}

export interface Deepseek2KvOptions {
  /** general.name (convert --model-name); default: derived from dirName like gguf-py. */
  name?: string;
  /** tokenizer.ggml.pre; default "deepseek-v3" (llama.cpp identifies DeepSeek-V3's tokenizer by a hash of its output). */
  tokenizerPre?: string;
  /**
   * Whether the HF config is read the way a transformers version that knows the model type does (it adds
   * head_dim = qk_rope_head_dim), which makes convert write attention.key_length/value_length before
   * general.file_type. Default true (transformers >= 4.48, as in the golden conversion).
   */
  transformersKnowsModel?: boolean;
  /** Extra general.* KVs appended after the name block (e.g. general.license), in order. */
  extraGeneral?: GgufKV[];
}

/** The KV list being built, with gguf-py's add_* semantics (an existing key keeps its position). */
export interface KvBuilder {
  kvs: GgufKV[];
  add(e: GgufKV): void;
  addStr(key: string, v: unknown): void;
  /** add_uint32 / add_float32 of a config value (a clear error when it is not a number). */
  u32(key: string, v: unknown): void;
  f32(key: string, v: unknown): void;
}

export function kvBuilder(): KvBuilder {
  const kvs: GgufKV[] = [];
  const add = (e: GgufKV) => setKvInPlace(kvs, e);
  return {
    kvs,
    add,
    addStr: (key, v) => {
      if (typeof v === "string" && v.length > 0) add(kv.str(key, v));
    },
    u32: (key, v) => {
      if (typeof v !== "number") throw new DeepcastError(`config.json: value for ${key} is not a number`, { file: "config.json" });
      add(kv.u32(key, v));
    },
    f32: (key, v) => {
      if (typeof v !== "number") throw new DeepcastError(`config.json: value for ${key} is not a number`, { file: "config.json" });
      add(kv.f32(key, v));
    },
  };
}

/**
 * Every metadata KV of convert_hf_to_gguf.py for a DeepSeek-V2/V3 checkpoint (and V3.2, whose class
 * extends V3's: its KVs come through `archKvs`, called after DeepseekV2Model's), in its order;
 * general.file_type is BF16's until an output type is chosen.
 */
export function buildDeepseek2Kvs(
  files: HfModelFiles,
  opts: Deepseek2KvOptions,
  params: ParamCounts,
  d: { blockCount: number; kvLora: number; qkNope: number; qkRope: number; vHead: number; nExpert: number },
  arch: { name: string; kvs?: (b: KvBuilder, h: Record<string, unknown>) => void } = { name: deepseek2Format().architecture },
): GgufKV[] {
  const A = arch.name;
  const h = { ...files.config };
  const b = generalKvs(files, opts, params, A);
  const { kvs, add, u32, f32 } = b;

  // DeepseekV2Model.set_gguf_parameters -> TextModel.set_gguf_parameters
  h.num_key_value_heads = 1;
  if (!("rms_norm_eps" in h)) h.rms_norm_eps = 1e-6;
  if ((opts.transformersKnowsModel ?? true) && !("head_dim" in h)) h.head_dim = d.qkRope;
  const rope = textModelKvs(b, h, A, d.blockCount, FILE_TYPE_BF16);

  // DeepseekV2Model part
  const hasMoe = h.n_routed_experts !== undefined && h.n_routed_experts !== null;
  const firstDense = h.first_k_dense_replace ?? (hasMoe ? 0 : d.blockCount);
  u32(archKey(Keys.LLM.LEADING_DENSE_BLOCK_COUNT, A), firstDense);
  u32(archKey(Keys.LLM.VOCAB_SIZE, A), h.vocab_size);
  if (h.q_lora_rank !== undefined && h.q_lora_rank !== null) u32(archKey(Keys.Attention.Q_LORA_RANK, A), h.q_lora_rank);
  u32(archKey(Keys.Attention.KV_LORA_RANK, A), d.kvLora);
  u32(archKey(Keys.Attention.KEY_LENGTH, A), d.kvLora + d.qkRope);
  u32(archKey(Keys.Attention.VALUE_LENGTH, A), d.kvLora);
  u32(archKey(Keys.Attention.KEY_LENGTH_MLA, A), d.qkNope + d.qkRope);
  u32(archKey(Keys.Attention.VALUE_LENGTH_MLA, A), d.vHead);
  const moeFf = findHparam(h, ["moe_intermediate_size", "intermediate_size"]);
  if (moeFf === undefined) throw new DeepcastError("config.json: moe_intermediate_size is missing", { file: "config.json" });
  u32(archKey(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, A), moeFf);
  if (hasMoe) u32(archKey(Keys.LLM.EXPERT_COUNT, A), h.n_routed_experts);
  u32(archKey(Keys.LLM.EXPERT_SHARED_COUNT, A), h.n_shared_experts ?? 0);
  if (h.routed_scaling_factor !== undefined && h.routed_scaling_factor !== null) f32(archKey(Keys.LLM.EXPERT_WEIGHTS_SCALE, A), h.routed_scaling_factor);
  if (truthy(h.norm_topk_prob)) add(kv.bool(archKey(Keys.LLM.EXPERT_WEIGHTS_NORM, A), true));
  u32(archKey(Keys.Rope.DIMENSION_COUNT, A), d.qkRope);
  const mscaleAll = rope.mscale_all_dim;
  if (typeof mscaleAll === "number") add(kv.f32(archKey(Keys.Rope.SCALING_YARN_LOG_MUL, A), 0.1 * mscaleAll));
  arch.kvs?.(b, h);

  add(kv.u32(Keys.General.QUANTIZATION_VERSION, 2));

  for (const e of tokenizerKvs(files, opts.tokenizerPre ?? "deepseek-v3", typeof h.vocab_size === "number" ? h.vocab_size : undefined)) add(e);
  return kvs;
}

/**
 * ModelBase.prepare_metadata up to set_gguf_parameters: general.architecture, then `early` (KVs a
 * model class adds in its __init__, e.g. V4's default chat template), general.type and gguf-py's
 * Metadata heuristics (name, basename, size label, ...), generation_config's sampling keys.
 */
export function generalKvs(files: HfModelFiles, opts: Deepseek2KvOptions, params: ParamCounts, A: string, early: GgufKV[] = []): KvBuilder {
  const b = kvBuilder();
  const { add, addStr } = b;
  const h = files.config;

  add(kv.str(Keys.General.ARCHITECTURE, A));
  for (const e of early) add(e);
  add(kv.str(Keys.General.TYPE, "model"));

  // Metadata.load: heuristics from config _name_or_path and the folder name, then generation_config
  const meta: ModelIdComponents = {};
  const merge = (c: ModelIdComponents, title: boolean) => {
    if (meta.name === undefined && c.name !== undefined) meta.name = title ? idToTitle(c.name) : c.name;
    if (meta.organization === undefined && c.organization !== undefined) meta.organization = idToTitle(c.organization);
    for (const k of ["basename", "finetune", "version", "sizeLabel"] as const) if (meta[k] === undefined && c[k] !== undefined) meta[k] = c[k];
  };
  const nameOrPath = h._name_or_path;
  if (typeof nameOrPath === "string" && (nameOrPath.match(/\//g) ?? []).length <= 1) merge(modelIdComponents(nameOrPath, params.total), true);
  if (files.dirName !== undefined) merge(modelIdComponents(files.dirName, params.total), true);
  const g = isObj(files.generationConfig) ? files.generationConfig : {};
  const sampling: [string, string, "INT32" | "FLOAT32" | "STRING"][] = [
    ["sequence", Keys.General.SAMPLING_SEQUENCE, "STRING"],
    ["top_k", Keys.General.SAMPLING_TOP_K, "INT32"],
    ["top_p", Keys.General.SAMPLING_TOP_P, "FLOAT32"],
    ["min_p", Keys.General.SAMPLING_MIN_P, "FLOAT32"],
    ["xtc_probability", Keys.General.SAMPLING_XTC_PROBABILITY, "FLOAT32"],
    ["xtc_threshold", Keys.General.SAMPLING_XTC_THRESHOLD, "FLOAT32"],
    ["temperature", Keys.General.SAMPLING_TEMP, "FLOAT32"],
    ["penalty_last_n", Keys.General.SAMPLING_PENALTY_LAST_N, "INT32"],
    ["penalty_repeat", Keys.General.SAMPLING_PENALTY_REPEAT, "FLOAT32"],
    ["mirostat", Keys.General.SAMPLING_MIROSTAT, "INT32"],
    ["mirostat_tau", Keys.General.SAMPLING_MIROSTAT_TAU, "FLOAT32"],
    ["mirostat_eta", Keys.General.SAMPLING_MIROSTAT_ETA, "FLOAT32"],
  ];
  for (const [src, key, type] of sampling) {
    let v = g[src];
    if (src === "penalty_repeat" && !(src in g)) v = g.repetition_penalty;
    if (v === null || v === undefined) continue;
    if (type === "STRING") addStr(key, v);
    else if (typeof v === "number") add({ key, type, value: v });
  }
  const name = opts.name ?? meta.name ?? files.dirName;
  if (name === undefined) throw new DeepcastError("no model name: pass a name or the checkpoint folder name");
  addStr(Keys.General.NAME, name);
  addStr(Keys.General.VERSION, meta.version);
  addStr(Keys.General.ORGANIZATION, meta.organization);
  addStr(Keys.General.FINETUNE, meta.finetune);
  addStr(Keys.General.BASENAME, meta.basename);
  const label = meta.sizeLabel ?? (params.total > 0 ? sizeLabel(params.total, params.shared, params.expert, params.expertCount) : undefined);
  addStr(Keys.General.SIZE_LABEL, label);
  for (const e of opts.extraGeneral ?? []) add(e);
  return b;
}

/**
 * TextModel.set_gguf_parameters (with TextModel.__init__'s rope_parameters mirroring): block count,
 * context, sizes, RoPE, norms, experts, gating, head_dim, general.file_type. Returns the
 * rope parameters (a class's own KVs read mscale_all_dim from them).
 */
export function textModelKvs(b: KvBuilder, h: Record<string, unknown>, A: string, blockCount: number, fileType: number): Record<string, unknown> {
  const { add, u32, f32 } = b;
  const rope: Record<string, unknown> = { ...(isObj(h.rope_parameters) ? h.rope_parameters : isObj(h.rope_scaling) ? h.rope_scaling : {}) };
  const ropeTheta = findHparam(h, ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"]);
  const origMax = findHparam(h, ["original_max_position_embeddings"]);
  if (!("full_attention" in rope) && !("sliding_attention" in rope)) {
    if (!("rope_theta" in rope) && ropeTheta !== undefined && ropeTheta !== null) rope.rope_theta = ropeTheta;
    if (!("rope_type" in rope) && rope.type !== undefined && rope.type !== null) rope.rope_type = rope.type;
    if (!("original_max_position_embeddings" in rope) && origMax !== undefined && origMax !== null) rope.original_max_position_embeddings = origMax;
  }
  const opt = (keys: string[]) => {
    const v = findHparam(h, keys);
    return v === null ? undefined : v;
  };

  u32(archKey(Keys.LLM.BLOCK_COUNT, A), blockCount);
  const nCtx = opt(["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"]);
  if (nCtx !== undefined) u32(archKey(Keys.LLM.CONTEXT_LENGTH, A), nCtx);
  const nEmbd = opt(["hidden_size", "n_embd", "dim"]);
  if (nEmbd !== undefined) u32(archKey(Keys.LLM.EMBEDDING_LENGTH, A), nEmbd);
  const nFf = opt(["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"]);
  if (nFf !== undefined) u32(archKey(Keys.LLM.FEED_FORWARD_LENGTH, A), nFf);
  const nHead = opt(["num_attention_heads", "n_head", "n_heads"]);
  if (nHead !== undefined) u32(archKey(Keys.Attention.HEAD_COUNT, A), nHead);
  u32(archKey(Keys.Attention.HEAD_COUNT_KV, A), h.num_key_value_heads);
  if (h.is_causal === false) add(kv.bool(archKey(Keys.Attention.CAUSAL, A), false));
  const rp = isObj(rope.full_attention) ? rope.full_attention : rope;
  const ropeType = rp.rope_type;
  if (typeof ropeType === "string") {
    const factor = rp.factor;
    if (ropeType === "linear" && typeof factor === "number") {
      add(kv.str(archKey(Keys.Rope.SCALING_TYPE, A), "linear"));
      f32(archKey(Keys.Rope.SCALING_FACTOR, A), factor);
    } else if (ropeType === "yarn" && typeof factor === "number") {
      add(kv.str(archKey(Keys.Rope.SCALING_TYPE, A), "yarn"));
      f32(archKey(Keys.Rope.SCALING_FACTOR, A), factor);
      u32(archKey(Keys.Rope.SCALING_ORIG_CTX_LEN, A), rp.original_max_position_embeddings);
      const opf = (key: string, v: unknown) => { if (v !== undefined && v !== null) f32(key, v); };
      opf(archKey(Keys.Rope.SCALING_YARN_EXT_FACTOR, A), rp.extrapolation_factor);
      opf(archKey(Keys.Rope.SCALING_YARN_ATTN_FACTOR, A), rp.attention_factor ?? rp.attn_factor);
      opf(archKey(Keys.Rope.SCALING_YARN_BETA_FAST, A), rp.beta_fast);
      opf(archKey(Keys.Rope.SCALING_YARN_BETA_SLOW, A), rp.beta_slow);
    } else if (ropeType === "su" || ropeType === "longrope") {
      add(kv.str(archKey(Keys.Rope.SCALING_TYPE, A), "longrope"));
    }
  }
  if (rp.rope_theta !== undefined && rp.rope_theta !== null) f32(archKey(Keys.Rope.FREQ_BASE, A), rp.rope_theta);
  const rmsEps = opt(["rms_norm_eps", "norm_eps"]);
  if (rmsEps !== undefined) f32(archKey(Keys.Attention.LAYERNORM_RMS_EPS, A), rmsEps);
  const lnEps = opt(["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"]);
  if (lnEps !== undefined) f32(archKey(Keys.Attention.LAYERNORM_EPS, A), lnEps);
  const nExp = opt(["num_local_experts", "num_experts", "n_routed_experts"]);
  if (nExp !== undefined) u32(archKey(Keys.LLM.EXPERT_COUNT, A), nExp);
  const nUsed = opt(["num_experts_per_tok", "num_experts_per_token", "top_k_experts"]);
  if (nUsed !== undefined) u32(archKey(Keys.LLM.EXPERT_USED_COUNT, A), nUsed);
  if (h.n_group !== undefined && h.n_group !== null) u32(archKey(Keys.LLM.EXPERT_GROUP_COUNT, A), h.n_group);
  if (h.topk_group !== undefined && h.topk_group !== null) u32(archKey(Keys.LLM.EXPERT_GROUP_USED_COUNT, A), h.topk_group);
  const score = opt(["score_function", "scoring_func", "score_func", "moe_router_activation", "moe_router_activation_func", "expert_selection_fn"]);
  if (score !== undefined) {
    const gating = ({ softmax: 1, sigmoid: 2, sqrtsoftplus: 4 } as Record<string, number>)[String(score)];
    if (gating === undefined) throw new DeepcastError(`unsupported expert score gating function ${JSON.stringify(score)}`, { file: "config.json" });
    add(kv.u32(archKey(Keys.LLM.EXPERT_GATING_FUNC, A), gating));
  }
  if (h.head_dim !== undefined && h.head_dim !== null) {
    u32(archKey(Keys.Attention.KEY_LENGTH, A), h.head_dim);
    u32(archKey(Keys.Attention.VALUE_LENGTH, A), h.head_dim);
  }
  add(kv.u32(Keys.General.FILE_TYPE, fileType));

  return rope;
}
