/**
 * The DeepSeek-V3 architecture's hyper-parameters from a Hugging Face `config.json`, and the one
 * check of those values against the checkpoint's tensor shapes that every command runs before it
 * writes anything (see checkModelConfig). The forward pass, the GGUF metadata and the demo config
 * all take their dimensions from a config that passed it.
 */
import { DeepcastError } from "../errors.js";
import { checkpointGeneration, GENERATION_NAME, type Generation } from "../formats/generation.js";
import { locate, type Checkpoint } from "./checkpoint.js";
import { checkV32Indexer, parseV32Indexer, type IndexerConfig } from "./hf-config-v32.js";
import { checkV4Config, parseV4Config, type V4Params } from "./hf-config-v4.js";

export interface RopeScaling {
  type: "yarn";
  factor: number;
  originalMaxPositionEmbeddings: number;
  betaFast: number;
  betaSlow: number;
  mscale: number;
  mscaleAllDim: number;
}

export interface ModelConfig {
  vocabSize: number;
  /** hidden_size */
  dim: number;
  /** intermediate_size of the dense MLP layers */
  interDim: number;
  moeInterDim: number;
  /** num_hidden_layers: decoder layers, MTP modules excluded */
  nLayers: number;
  /** first_k_dense_replace: layers 0..nDenseLayers-1 have a dense MLP */
  nDenseLayers: number;
  /** moe_layer_freq (1 in every released DeepSeek-V3 config) */
  moeLayerFreq: number;
  nHeads: number;
  nRoutedExperts: number;
  nSharedExperts: number;
  /** num_experts_per_tok */
  nActivatedExperts: number;
  /** n_group */
  nExpertGroups: number;
  /** topk_group */
  nLimitedGroups: number;
  /** sqrtsoftplus: DeepSeek-V4 only (its router lives in src/model/v4/). */
  scoreFunc: "sigmoid" | "softmax" | "sqrtsoftplus";
  topkMethod: string;
  normTopkProb: boolean;
  routeScale: number;
  /** 0 = no q LoRA (wq directly) */
  qLoraRank: number;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  rmsNormEps: number;
  maxPositionEmbeddings: number;
  bosTokenId: number;
  eosTokenId: number;
  /** num_nextn_predict_layers: MTP modules stored after the decoder layers (not run by forward) */
  nMtpLayers: number;
  tieWordEmbeddings: boolean;
  /**
   * DeepSeek-V4's own hyper-parameters (./hf-config-v4.ts); present only for a V4 model, whose forward
   * pass is src/model/forward-v4.ts. The V3 fields above then hold V4's values where the concept is
   * shared (dimensions, experts, routing, YaRN) and the single-KV-head equivalents otherwise.
   */
  v4?: V4Params;
  /** DeepSeek-V3.2 (model_type deepseek_v32): the lightning indexer's hyper-parameters; absent for V3. */
  indexer?: IndexerConfig;
}

export function num(cfg: Record<string, unknown>, key: string, fallback?: number, file = "config.json"): number {
  const v = cfg[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new DeepcastError(`config.json has no ${key}`, { file, code: "CONFIG_MISMATCH" });
  }
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new DeepcastError(`config.json: ${key} must be a number, got ${JSON.stringify(v)}`, { file, code: "CONFIG_MISMATCH" });
  }
  return v;
}

export function int(cfg: Record<string, unknown>, key: string, fallback?: number, file = "config.json"): number {
  const v = num(cfg, key, fallback, file);
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new DeepcastError(`config.json: ${key} must be a non-negative integer, got ${v}`, { file, code: "CONFIG_MISMATCH" });
  }
  return v;
}

/** config.json's `rope_scaling` (YaRN only), or null without one. */
export function parseRopeScaling(cfg: Record<string, unknown>, file: string): RopeScaling | null {
  const rs = cfg.rope_scaling as Record<string, unknown> | null | undefined;
  if (!rs || typeof rs !== "object") return null;
  const type = rs.type ?? rs.rope_type;
  if (type !== "yarn") {
    throw new DeepcastError(`config.json: unsupported rope_scaling type ${JSON.stringify(type)}`, { file, code: "UNSUPPORTED" });
  }
  return {
    type: "yarn",
    factor: num(rs, "factor", undefined, file),
    originalMaxPositionEmbeddings: int(rs, "original_max_position_embeddings", undefined, file),
    betaFast: num(rs, "beta_fast", 32, file),
    betaSlow: num(rs, "beta_slow", 1, file),
    mscale: num(rs, "mscale", 1, file),
    mscaleAllDim: num(rs, "mscale_all_dim", 0, file),
  };
}

/** Parses an HF DeepSeek-V3 (or V2-style, or V3.2 with its indexer) `config.json`. */
export function parseModelConfig(raw: unknown, file = "config.json"): ModelConfig {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    throw new DeepcastError("config.json is not a JSON object", { file, code: "CONFIG_MISMATCH" });
  }
  const cfg = raw as Record<string, unknown>;
  const modelType = cfg.model_type;
  if (modelType !== undefined && modelType !== "deepseek_v3" && modelType !== "deepseek_v2" && modelType !== "deepseek_v32") {
    throw new DeepcastError(`config.json: model_type ${JSON.stringify(modelType)} is not deepseek_v3`, { file, code: "UNSUPPORTED" });
  }
  const scoreFunc = (cfg.scoring_func ?? "softmax") as string;
  if (scoreFunc !== "sigmoid" && scoreFunc !== "softmax") {
    throw new DeepcastError(`config.json: unsupported scoring_func ${JSON.stringify(scoreFunc)}`, { file, code: "UNSUPPORTED" });
  }
  const hiddenAct = cfg.hidden_act ?? "silu";
  if (hiddenAct !== "silu") {
    throw new DeepcastError(`config.json: unsupported hidden_act ${JSON.stringify(hiddenAct)}`, { file, code: "UNSUPPORTED" });
  }
  const ropeScaling = parseRopeScaling(cfg, file);
  const c: ModelConfig = {
    vocabSize: int(cfg, "vocab_size", undefined, file),
    dim: int(cfg, "hidden_size", undefined, file),
    interDim: int(cfg, "intermediate_size", undefined, file),
    moeInterDim: int(cfg, "moe_intermediate_size", undefined, file),
    nLayers: int(cfg, "num_hidden_layers", undefined, file),
    nDenseLayers: int(cfg, "first_k_dense_replace", 0, file),
    moeLayerFreq: int(cfg, "moe_layer_freq", 1, file),
    nHeads: int(cfg, "num_attention_heads", undefined, file),
    nRoutedExperts: int(cfg, "n_routed_experts", 0, file),
    nSharedExperts: int(cfg, "n_shared_experts", 0, file),
    nActivatedExperts: int(cfg, "num_experts_per_tok", 0, file),
    nExpertGroups: int(cfg, "n_group", 1, file),
    nLimitedGroups: int(cfg, "topk_group", 1, file),
    scoreFunc,
    topkMethod: String(cfg.topk_method ?? "greedy"),
    normTopkProb: Boolean(cfg.norm_topk_prob ?? false),
    routeScale: num(cfg, "routed_scaling_factor", 1, file),
    qLoraRank: int(cfg, "q_lora_rank", 0, file),
    kvLoraRank: int(cfg, "kv_lora_rank", undefined, file),
    qkNopeHeadDim: int(cfg, "qk_nope_head_dim", undefined, file),
    qkRopeHeadDim: int(cfg, "qk_rope_head_dim", undefined, file),
    vHeadDim: int(cfg, "v_head_dim", undefined, file),
    ropeTheta: num(cfg, "rope_theta", 10000, file),
    ropeScaling,
    rmsNormEps: num(cfg, "rms_norm_eps", 1e-6, file),
    maxPositionEmbeddings: int(cfg, "max_position_embeddings", undefined, file),
    bosTokenId: int(cfg, "bos_token_id", 0, file),
    eosTokenId: int(cfg, "eos_token_id", 1, file),
    nMtpLayers: int(cfg, "num_nextn_predict_layers", 0, file),
    tieWordEmbeddings: Boolean(cfg.tie_word_embeddings ?? false),
  };
  if (modelType === "deepseek_v32") c.indexer = parseV32Indexer(cfg, file);
  const bad = (msg: string) => new DeepcastError(`config.json: ${msg}`, { file, code: "CONFIG_MISMATCH" });
  if (c.qkRopeHeadDim % 2 !== 0) throw bad(`qk_rope_head_dim ${c.qkRopeHeadDim} must be even`);
  if (c.nRoutedExperts > 0) {
    if (c.nExpertGroups < 1 || c.nRoutedExperts % c.nExpertGroups !== 0) {
      throw bad(`n_routed_experts ${c.nRoutedExperts} is not divisible by n_group ${c.nExpertGroups}`);
    }
    if (c.nLimitedGroups < 1 || c.nLimitedGroups > c.nExpertGroups) throw bad(`topk_group ${c.nLimitedGroups} out of range`);
    const perGroup = c.nRoutedExperts / c.nExpertGroups;
    if (c.nActivatedExperts < 1 || c.nActivatedExperts > c.nLimitedGroups * perGroup) {
      throw bad(`num_experts_per_tok ${c.nActivatedExperts} out of range`);
    }
  }
  return c;
}


/** The tensors a config is checked against: HF names and shapes. */
export interface TensorShapes {
  names(): Iterable<string>;
  shape(name: string): readonly number[] | undefined;
}

/**
 * Checks config.json against the tensors, before anything is written. "full" (to-gguf, to-demo,
 * validate): the config must parse as a DeepSeek-V3 config, every dimension the GGUF metadata, the
 * demo config or the forward pass takes from it must be positive and agree with the tensors that
 * carry it, and the MoE settings must be consistent. "present" (fp8-to-bf16, which only copies the
 * config): the config must be a JSON object and every dimension it gives must agree with the tensors.
 * Returns the parsed config in "full" mode. Errors are CONFIG_MISMATCH, naming the file, key and tensor.
 */
export function checkModelConfig(raw: unknown, tensors: TensorShapes, file: string, mode: "full" | "present"): ModelConfig | null {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new DeepcastError("config.json is not a JSON object", { file, code: "CONFIG_MISMATCH" });
  }
  const cfg = raw as Record<string, unknown>;
  const bad = (msg: string, tensor?: string) => new DeepcastError(`config.json: ${msg}`, { file, tensor, code: "CONFIG_MISMATCH" });
  const parsed = mode === "full" ? parseModelConfig(cfg, file) : null;
  /** A dimension given by the config (validated), or the parsed default in full mode; undefined: not given. */
  const dim = (key: string, fromParsed?: (c: ModelConfig) => number): number | undefined => {
    const v = cfg[key];
    if (v === undefined || v === null) return parsed && fromParsed ? fromParsed(parsed) : undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw bad(`${key} must be a non-negative integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const v = {
    vocab: dim("vocab_size"),
    hidden: dim("hidden_size"),
    inter: dim("intermediate_size"),
    moeInter: dim("moe_intermediate_size"),
    layers: dim("num_hidden_layers"),
    mtp: dim("num_nextn_predict_layers", (c) => c.nMtpLayers) ?? 0,
    dense: dim("first_k_dense_replace", (c) => c.nDenseLayers),
    heads: dim("num_attention_heads"),
    kvHeads: dim("num_key_value_heads"),
    experts: dim("n_routed_experts", (c) => c.nRoutedExperts),
    shared: dim("n_shared_experts", (c) => c.nSharedExperts),
    perTok: dim("num_experts_per_tok", (c) => c.nActivatedExperts),
    groups: dim("n_group"),
    topkGroups: dim("topk_group"),
    qLora: dim("q_lora_rank", (c) => c.qLoraRank),
    kvLora: dim("kv_lora_rank"),
    nope: dim("qk_nope_head_dim"),
    rope: dim("qk_rope_head_dim"),
    vHead: dim("v_head_dim"),
  };
  if (mode === "full") {
    const positive: [string, number | undefined][] = [
      ["vocab_size", v.vocab], ["hidden_size", v.hidden], ["num_hidden_layers", v.layers], ["num_attention_heads", v.heads],
      ["kv_lora_rank", v.kvLora], ["qk_nope_head_dim", v.nope], ["qk_rope_head_dim", v.rope], ["v_head_dim", v.vHead],
      ["max_position_embeddings", parsed!.maxPositionEmbeddings],
    ];
    if ((v.dense ?? 0) > 0 || v.experts === 0) positive.push(["intermediate_size", v.inter]);
    if ((v.experts ?? 0) > 0) positive.push(["moe_intermediate_size", v.moeInter]);
    for (const [k, x] of positive) if (x === 0) throw bad(`${k} must be positive, got 0`);
  }
  if (v.kvHeads !== undefined && v.heads !== undefined && v.kvHeads !== v.heads) {
    throw bad(`num_key_value_heads ${v.kvHeads} differs from num_attention_heads ${v.heads} (DeepSeek-V3 attention has one KV head per head)`);
  }
  // MoE settings that must be consistent (parseModelConfig checks them too in full mode).
  if (v.experts !== undefined && v.experts > 0) {
    if (v.groups !== undefined && (v.groups < 1 || v.experts % v.groups !== 0)) throw bad(`n_group ${v.groups} does not divide n_routed_experts ${v.experts}`);
    if (v.topkGroups !== undefined && v.groups !== undefined && (v.topkGroups < 1 || v.topkGroups > v.groups)) throw bad(`topk_group ${v.topkGroups} is not between 1 and n_group ${v.groups}`);
    if (v.perTok !== undefined && (v.perTok < 1 || v.perTok > v.experts)) throw bad(`num_experts_per_tok ${v.perTok} is not between 1 and n_routed_experts ${v.experts}`);
  }

  const shapeOf = (n: string) => tensors.shape(n);
  /** The tensor, when present, must have these dims; each expected dim says which config keys give it. */
  const expect = (name: string, dims: [number | undefined, string][]) => {
    const s = shapeOf(name);
    if (!s) return;
    if (s.length !== dims.length) throw bad(`tensor ${name} has shape ${JSON.stringify(s)}, expected ${dims.length} dimension(s) (${dims.map((d) => d[1]).join(", ")})`, name);
    for (const [i, [want, keys]] of dims.entries()) {
      if (want !== undefined && s[i] !== want) {
        throw bad(`${keys} = ${want}, but tensor ${name} has ${s[i]} in dimension ${i} (shape ${JSON.stringify(s)})`, name);
      }
    }
  };
  const mul = (...xs: (number | undefined)[]) => (xs.every((x) => x !== undefined) ? xs.reduce((a, b) => a! * b!, 1) : undefined);
  const add = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined ? a + b : undefined);

  expect("model.embed_tokens.weight", [[v.vocab, "vocab_size"], [v.hidden, "hidden_size"]]);
  expect("lm_head.weight", [[v.vocab, "vocab_size"], [v.hidden, "hidden_size"]]);
  expect("model.norm.weight", [[v.hidden, "hidden_size"]]);

  // Layers: 0..num_hidden_layers-1 are decoder layers, the next num_nextn_predict_layers MTP modules.
  const layerRe = /^model\.layers\.(\d+)\./;
  const present = new Set<number>();
  const experts = new Map<number, number>();
  const expertRe = /^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\./;
  for (const n of tensors.names()) {
    const m = layerRe.exec(n);
    if (!m) continue;
    present.add(Number(m[1]));
    const e = expertRe.exec(n);
    if (e) experts.set(Number(e[1]), Math.max(experts.get(Number(e[1])) ?? 0, Number(e[2]) + 1));
  }
  const maxLayer = present.size ? Math.max(...present) : -1;
  if (v.layers !== undefined && present.size > 0) {
    if (maxLayer + 1 > v.layers + v.mtp) {
      throw bad(`num_hidden_layers ${v.layers} + num_nextn_predict_layers ${v.mtp} = ${v.layers + v.mtp} layers, but the checkpoint has model.layers.${maxLayer}`, `model.layers.${maxLayer}`);
    }
    for (let l = 0; l < v.layers; l++) {
      if (!present.has(l)) throw bad(`num_hidden_layers = ${v.layers}, but the checkpoint has no tensors of layer ${l}`, `model.layers.${l}`);
    }
  }
  const qkHead = add(v.nope, v.rope);
  for (const l of [...present].sort((a, b) => a - b)) {
    const p = `model.layers.${l}.`;
    const a = `${p}self_attn.`;
    expect(`${p}input_layernorm.weight`, [[v.hidden, "hidden_size"]]);
    expect(`${p}post_attention_layernorm.weight`, [[v.hidden, "hidden_size"]]);
    if (shapeOf(`${a}q_a_proj.weight`) && v.qLora === 0 && mode === "full") throw bad(`q_lora_rank is ${cfg.q_lora_rank === undefined ? "absent" : String(cfg.q_lora_rank)}, but the checkpoint has ${a}q_a_proj.weight`, `${a}q_a_proj.weight`);
    expect(`${a}q_a_proj.weight`, [[v.qLora || undefined, "q_lora_rank"], [v.hidden, "hidden_size"]]);
    expect(`${a}q_a_layernorm.weight`, [[v.qLora || undefined, "q_lora_rank"]]);
    expect(`${a}q_b_proj.weight`, [[mul(v.heads, qkHead), "num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim)"], [v.qLora || undefined, "q_lora_rank"]]);
    expect(`${a}q_proj.weight`, [[mul(v.heads, qkHead), "num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim)"], [v.hidden, "hidden_size"]]);
    expect(`${a}kv_a_proj_with_mqa.weight`, [[add(v.kvLora, v.rope), "kv_lora_rank + qk_rope_head_dim"], [v.hidden, "hidden_size"]]);
    expect(`${a}kv_a_layernorm.weight`, [[v.kvLora, "kv_lora_rank"]]);
    expect(`${a}kv_b_proj.weight`, [[mul(v.heads, add(v.nope, v.vHead)), "num_attention_heads * (qk_nope_head_dim + v_head_dim)"], [v.kvLora, "kv_lora_rank"]]);
    expect(`${a}o_proj.weight`, [[v.hidden, "hidden_size"], [mul(v.heads, v.vHead), "num_attention_heads * v_head_dim"]]);
    const m = `${p}mlp.`;
    const moe = shapeOf(`${m}gate.weight`) !== undefined;
    if (v.layers !== undefined && l < v.layers && v.dense !== undefined) {
      const wantMoe = (v.experts ?? 1) > 0 && l >= v.dense && (parsed ? l % parsed.moeLayerFreq === 0 : true);
      if (wantMoe !== moe && (moe || shapeOf(`${m}gate_proj.weight`))) {
        throw bad(`first_k_dense_replace = ${v.dense}${wantMoe ? "" : " (or n_routed_experts 0)"} makes layer ${l} ${wantMoe ? "MoE" : "dense"}, but the checkpoint has a ${moe ? "MoE" : "dense"} layer ${l}`, moe ? `${m}gate.weight` : `${m}gate_proj.weight`);
      }
    }
    expect(`${m}gate_proj.weight`, [[v.inter, "intermediate_size"], [v.hidden, "hidden_size"]]);
    expect(`${m}up_proj.weight`, [[v.inter, "intermediate_size"], [v.hidden, "hidden_size"]]);
    expect(`${m}down_proj.weight`, [[v.hidden, "hidden_size"], [v.inter, "intermediate_size"]]);
    expect(`${m}gate.weight`, [[v.experts, "n_routed_experts"], [v.hidden, "hidden_size"]]);
    expect(`${m}gate.e_score_correction_bias`, [[v.experts, "n_routed_experts"]]);
    const nExp = experts.get(l);
    if (nExp !== undefined && v.experts !== undefined && nExp > v.experts) {
      throw bad(`n_routed_experts = ${v.experts}, but the checkpoint has expert ${nExp - 1} in layer ${l}`, `${m}experts.${nExp - 1}`);
    }
    if (moe && mode === "full" && nExp !== undefined && nExp < v.experts!) {
      throw bad(`n_routed_experts = ${v.experts}, but layer ${l} has only ${nExp} experts`, `${m}experts.${nExp}`);
    }
    for (const e of nExp !== undefined ? [0, nExp - 1] : []) {
      expect(`${m}experts.${e}.gate_proj.weight`, [[v.moeInter, "moe_intermediate_size"], [v.hidden, "hidden_size"]]);
      expect(`${m}experts.${e}.up_proj.weight`, [[v.moeInter, "moe_intermediate_size"], [v.hidden, "hidden_size"]]);
      expect(`${m}experts.${e}.down_proj.weight`, [[v.hidden, "hidden_size"], [v.moeInter, "moe_intermediate_size"]]);
    }
    expect(`${m}shared_experts.gate_proj.weight`, [[mul(v.moeInter, v.shared), "moe_intermediate_size * n_shared_experts"], [v.hidden, "hidden_size"]]);
    expect(`${m}shared_experts.up_proj.weight`, [[mul(v.moeInter, v.shared), "moe_intermediate_size * n_shared_experts"], [v.hidden, "hidden_size"]]);
    expect(`${m}shared_experts.down_proj.weight`, [[v.hidden, "hidden_size"], [mul(v.moeInter, v.shared), "moe_intermediate_size * n_shared_experts"]]);
    if (moe && mode === "full" && v.shared! > 0 && !shapeOf(`${m}shared_experts.gate_proj.weight`) && nExp !== undefined) {
      throw bad(`n_shared_experts = ${v.shared}, but layer ${l} has no shared expert`, `${m}shared_experts.gate_proj.weight`);
    }
  }
  if (mode === "full") {
    for (const n of ["model.embed_tokens.weight", "model.norm.weight"]) {
      if (!shapeOf(n)) throw new DeepcastError("the checkpoint has no such tensor, which every DeepSeek-V3 model has", { file, tensor: n, code: "NOT_FOUND" });
    }
  }
  return parsed;
}

/**
 * checkModelConfig for a loaded checkpoint: its config.json against its shards' tensors, by generation.
 * DeepSeek-V4 is checked by ./hf-config-v4.ts; in "full" mode (parsed with its V4 part) only for a command
 * that lists it in `accept` (the forward pass).
 * DeepSeek-V3.2 is V3 plus the indexer (./hf-config-v32.ts); in "full" mode only for a command that
 * lists it in `accept` (to-gguf, to-demo, the forward pass's HfWeightSource).
 */
export function checkCheckpointConfig(ckpt: Checkpoint, mode: "full", opts?: { accept?: Generation[] }): ModelConfig;
export function checkCheckpointConfig(ckpt: Checkpoint, mode: "present"): ModelConfig | null;
export function checkCheckpointConfig(ckpt: Checkpoint, mode: "full" | "present", opts: { accept?: Generation[] } = {}): ModelConfig | null {
  const file = `${ckpt.source.description}/config.json`;
  if (!ckpt.config) {
    if (mode === "present") return null;
    throw new DeepcastError("the checkpoint has no config.json", { file: ckpt.source.description, code: "NOT_FOUND" });
  }
  const tensors = { names: () => ckpt.weightMap.keys(), shape: (n: string) => locate(ckpt, n)?.entry.shape, dtype: (n: string) => locate(ckpt, n)?.entry.dtype };
  const generation = checkpointGeneration(ckpt.config, ckpt.weightMap.keys());
  const unsupported = () => new DeepcastError(`${GENERATION_NAME[generation]} checkpoints are not supported by this command yet`, { file, code: "UNSUPPORTED" });
  if (generation === "deepseek-v4") {
    if (mode === "full" && !opts.accept?.includes(generation)) throw unsupported();
    checkV4Config(ckpt.config, tensors, file);
    return mode === "full" ? parseV4Config(ckpt.config, file) : null;
  }
  if (generation === "deepseek-v32") {
    if (mode === "full" && !opts.accept?.includes(generation)) throw unsupported();
    // V3's layout and hyper-parameters plus the indexer (also when only the architecture or the tensors say V3.2).
    const parsed = checkModelConfig({ ...ckpt.config, model_type: "deepseek_v32" }, tensors, file, mode);
    checkV32Indexer(ckpt.config, tensors, file);
    return parsed;
  }
  return checkModelConfig(ckpt.config, tensors, file, mode);
}

/** The HF config.json keys a parsed config came from (for a GGUF or demo config turned back into one). */
export function hfConfigOf(c: ModelConfig): Record<string, unknown> {
  return {
    model_type: c.indexer ? "deepseek_v32" : "deepseek_v3",
    ...(c.indexer ? { index_n_heads: c.indexer.nHeads, index_head_dim: c.indexer.headDim, index_topk: c.indexer.topk } : {}),
    vocab_size: c.vocabSize, hidden_size: c.dim, intermediate_size: c.interDim, moe_intermediate_size: c.moeInterDim,
    num_hidden_layers: c.nLayers, first_k_dense_replace: c.nDenseLayers, moe_layer_freq: c.moeLayerFreq,
    num_attention_heads: c.nHeads, n_routed_experts: c.nRoutedExperts, n_shared_experts: c.nSharedExperts,
    num_experts_per_tok: c.nActivatedExperts, n_group: c.nExpertGroups, topk_group: c.nLimitedGroups,
    scoring_func: c.scoreFunc, topk_method: c.topkMethod, norm_topk_prob: c.normTopkProb, routed_scaling_factor: c.routeScale,
    q_lora_rank: c.qLoraRank, kv_lora_rank: c.kvLoraRank, qk_nope_head_dim: c.qkNopeHeadDim, qk_rope_head_dim: c.qkRopeHeadDim,
    v_head_dim: c.vHeadDim, rope_theta: c.ropeTheta, rms_norm_eps: c.rmsNormEps, max_position_embeddings: c.maxPositionEmbeddings,
    bos_token_id: c.bosTokenId, eos_token_id: c.eosTokenId, num_nextn_predict_layers: c.nMtpLayers, tie_word_embeddings: c.tieWordEmbeddings,
    ...(c.ropeScaling ? { rope_scaling: {
      type: "yarn", factor: c.ropeScaling.factor, original_max_position_embeddings: c.ropeScaling.originalMaxPositionEmbeddings,
      beta_fast: c.ropeScaling.betaFast, beta_slow: c.ropeScaling.betaSlow, mscale: c.ropeScaling.mscale, mscale_all_dim: c.ropeScaling.mscaleAllDim,
    } } : {}),
  };
}
