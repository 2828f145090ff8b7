/**
 * The DeepSeek-V3 architecture's hyper-parameters, read from a Hugging Face `config.json`
 * (model_type deepseek_v3), and the constants DeepSeek's `inference/model.py` derives from them:
 * the attention softmax scale with the YaRN mscale factor and the YaRN inverse frequencies.
 */
import { DeepcastError } from "../errors.js";

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
  scoreFunc: "sigmoid" | "softmax";
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
}

function num(cfg: Record<string, unknown>, key: string, fallback?: number): number {
  const v = cfg[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new DeepcastError(`config.json has no ${key}`, { file: "config.json" });
  }
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new DeepcastError(`config.json: ${key} must be a number, got ${JSON.stringify(v)}`, { file: "config.json" });
  }
  return v;
}

function int(cfg: Record<string, unknown>, key: string, fallback?: number): number {
  const v = num(cfg, key, fallback);
  if (!Number.isInteger(v) || v < 0) {
    throw new DeepcastError(`config.json: ${key} must be a non-negative integer, got ${v}`, { file: "config.json" });
  }
  return v;
}

/** Parses an HF DeepSeek-V3 (or V2-style) `config.json`. */
export function parseModelConfig(raw: unknown): ModelConfig {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    throw new DeepcastError("config.json is not a JSON object", { file: "config.json" });
  }
  const cfg = raw as Record<string, unknown>;
  const modelType = cfg.model_type;
  if (modelType !== undefined && modelType !== "deepseek_v3" && modelType !== "deepseek_v2") {
    throw new DeepcastError(`config.json: model_type ${JSON.stringify(modelType)} is not deepseek_v3`, { file: "config.json" });
  }
  const scoreFunc = (cfg.scoring_func ?? "softmax") as string;
  if (scoreFunc !== "sigmoid" && scoreFunc !== "softmax") {
    throw new DeepcastError(`config.json: unsupported scoring_func ${JSON.stringify(scoreFunc)}`, { file: "config.json" });
  }
  const hiddenAct = cfg.hidden_act ?? "silu";
  if (hiddenAct !== "silu") {
    throw new DeepcastError(`config.json: unsupported hidden_act ${JSON.stringify(hiddenAct)}`, { file: "config.json" });
  }
  let ropeScaling: RopeScaling | null = null;
  const rs = cfg.rope_scaling as Record<string, unknown> | null | undefined;
  if (rs && typeof rs === "object") {
    const type = rs.type ?? rs.rope_type;
    if (type !== "yarn") {
      throw new DeepcastError(`config.json: unsupported rope_scaling type ${JSON.stringify(type)}`, { file: "config.json" });
    }
    ropeScaling = {
      type: "yarn",
      factor: num(rs, "factor"),
      originalMaxPositionEmbeddings: int(rs, "original_max_position_embeddings"),
      betaFast: num(rs, "beta_fast", 32),
      betaSlow: num(rs, "beta_slow", 1),
      mscale: num(rs, "mscale", 1),
      mscaleAllDim: num(rs, "mscale_all_dim", 0),
    };
  }
  const c: ModelConfig = {
    vocabSize: int(cfg, "vocab_size"),
    dim: int(cfg, "hidden_size"),
    interDim: int(cfg, "intermediate_size"),
    moeInterDim: int(cfg, "moe_intermediate_size"),
    nLayers: int(cfg, "num_hidden_layers"),
    nDenseLayers: int(cfg, "first_k_dense_replace", 0),
    moeLayerFreq: int(cfg, "moe_layer_freq", 1),
    nHeads: int(cfg, "num_attention_heads"),
    nRoutedExperts: int(cfg, "n_routed_experts", 0),
    nSharedExperts: int(cfg, "n_shared_experts", 0),
    nActivatedExperts: int(cfg, "num_experts_per_tok", 0),
    nExpertGroups: int(cfg, "n_group", 1),
    nLimitedGroups: int(cfg, "topk_group", 1),
    scoreFunc,
    topkMethod: String(cfg.topk_method ?? "greedy"),
    normTopkProb: Boolean(cfg.norm_topk_prob ?? false),
    routeScale: num(cfg, "routed_scaling_factor", 1),
    qLoraRank: int(cfg, "q_lora_rank", 0),
    kvLoraRank: int(cfg, "kv_lora_rank"),
    qkNopeHeadDim: int(cfg, "qk_nope_head_dim"),
    qkRopeHeadDim: int(cfg, "qk_rope_head_dim"),
    vHeadDim: int(cfg, "v_head_dim"),
    ropeTheta: num(cfg, "rope_theta", 10000),
    ropeScaling,
    rmsNormEps: num(cfg, "rms_norm_eps", 1e-6),
    maxPositionEmbeddings: int(cfg, "max_position_embeddings"),
    bosTokenId: int(cfg, "bos_token_id", 0),
    eosTokenId: int(cfg, "eos_token_id", 1),
    nMtpLayers: int(cfg, "num_nextn_predict_layers", 0),
    tieWordEmbeddings: Boolean(cfg.tie_word_embeddings ?? false),
  };
  const bad = (msg: string) => new DeepcastError(`config.json: ${msg}`, { file: "config.json" });
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

export function qkHeadDim(c: ModelConfig): number {
  return c.qkNopeHeadDim + c.qkRopeHeadDim;
}

/** Whether layer `l` (0-based decoder layer) has a MoE FFN, as HF's DeepseekV3DecoderLayer decides. */
export function isMoeLayer(c: ModelConfig, l: number): boolean {
  return c.nRoutedExperts > 0 && l >= c.nDenseLayers && l % c.moeLayerFreq === 0;
}

/** YaRN's attention scale factor: 0.1 * m * ln(s) + 1 for s > 1. */
export function yarnMscale(scale: number, m: number): number {
  return scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1;
}

/**
 * The attention softmax scale: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN.
 * model.py applies the factor only when its max_seq_len exceeds original_seq_len; HF (and the
 * official numerics) always do, and so does this reimplementation.
 */
export function softmaxScale(c: ModelConfig): number {
  let s = qkHeadDim(c) ** -0.5;
  if (c.ropeScaling) {
    const m = yarnMscale(c.ropeScaling.factor, c.ropeScaling.mscaleAllDim);
    s = s * m * m;
  }
  return s;
}

const f = Math.fround;

/**
 * RoPE inverse frequencies for the qk_rope_head_dim/2 interleaved pairs, in float32 as model.py's
 * precompute_freqs_cis computes them (YaRN ramp between the beta_fast/beta_slow correction dims).
 */
export function ropeInvFreq(c: ModelConfig): Float32Array {
  const dim = c.qkRopeHeadDim;
  const half = dim / 2;
  const base = c.ropeTheta;
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) freqs[i] = f(1 / f(Math.pow(base, f((2 * i) / dim))));
  const rs = c.ropeScaling;
  if (!rs) return freqs;
  const corrDim = (rot: number) => (dim * Math.log(rs.originalMaxPositionEmbeddings / (rot * 2 * Math.PI))) / (2 * Math.log(base));
  const low = Math.max(Math.floor(corrDim(rs.betaFast)), 0);
  let high = Math.min(Math.ceil(corrDim(rs.betaSlow)), dim - 1);
  if (low === high) high += 0.001;
  const factor = f(rs.factor);
  for (let i = 0; i < half; i++) {
    const ramp = Math.min(1, Math.max(0, f(f(i - low) / f(high - low))));
    const smooth = f(1 - ramp);
    const fr = freqs[i]!;
    freqs[i] = f(f(f(fr / factor) * f(1 - smooth)) + f(fr * smooth));
  }
  return freqs;
}

/** cos/sin tables [positions, qk_rope_head_dim/2] (float32, angle = f32(pos * freq)). */
export function ropeTables(c: ModelConfig, positions: number): { cos: Float32Array; sin: Float32Array } {
  const inv = ropeInvFreq(c);
  const half = inv.length;
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const a = f(p * inv[i]!);
      cos[p * half + i] = Math.cos(a);
      sin[p * half + i] = Math.sin(a);
    }
  }
  return { cos, sin };
}
