/**
 * DeepSeek-V4's two RoPE flavours (model.py Attention.__init__): layers without compression use
 * rope_theta and no YaRN; compressed layers (ratio 4 or 128) use compress_rope_theta with YaRN
 * (rope_scaling's factor, beta_fast/slow over original_max_position_embeddings). Both rotate the
 * last qk_rope_head_dim dims in interleaved pairs with unit-magnitude factors (no mscale); the
 * attention output is rotated back with the conjugate (the inverse tables here).
 */
import { ropeTables, type ModelConfig } from "../config.js";

export interface RopeTables {
  cos: Float32Array;
  sin: Float32Array;
}

export interface V4Rope {
  /** Forward and inverse tables for one layer kind. */
  fwd: RopeTables;
  inv: RopeTables;
}

function pair(cfg: ModelConfig, positions: number): V4Rope {
  const fwd = ropeTables(cfg, positions);
  return { fwd, inv: { cos: fwd.cos, sin: fwd.sin.map((s) => -s) } };
}

/** The tables of a layer with compress ratio `ratio` (0: plain rope_theta; else compress_rope_theta with YaRN). */
export function v4RopeTables(cfg: ModelConfig, positions: number): { plain: V4Rope; compressed: V4Rope } {
  return {
    plain: pair({ ...cfg, ropeScaling: null }, positions),
    compressed: pair({ ...cfg, ropeTheta: cfg.v4!.compressRopeTheta }, positions),
  };
}
