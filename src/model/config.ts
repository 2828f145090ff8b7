/**
 * The DeepSeek-V3 architecture's hyper-parameters, read from a Hugging Face `config.json`
 * (model_type deepseek_v3), and the constants DeepSeek's `inference/model.py` derives from them:
 * the attention softmax scale with the YaRN mscale factor and the YaRN inverse frequencies.
 */
import type { ModelConfig } from "../io/hf-config.js";

export { parseModelConfig, type ModelConfig, type RopeScaling } from "../io/hf-config.js";

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
