/**
 * Which tensor scales which weight, for every DeepSeek generation, and the grid it must have:
 *  - V3 / V3.1 / V3.2: F8_E4M3 `W` + F32 `W_scale_inv` [ceil(rows/128), ceil(cols/128)] (./fp8.ts);
 *  - V4: F8_E4M3 `P.weight` + F8_E8M0 `P.scale` on the same 128x128 tile grid;
 *  - V4 routed experts: I8 `P.weight` [rows, cols/2] (packed FP4, ./fp4.ts) + F8_E8M0 `P.scale`
 *    [rows, cols/32].
 * The rule is decided per tensor from names and dtypes, so a checkpoint needs no declared generation.
 */
import type { Dtype } from "../io/dtypes.js";
import { FP8_BLOCK, scaleNameOf as v3ScaleNameOf, scaleShape as tileShape, weightOfScale as v3WeightOfScale } from "./fp8.js";
import { fp4ScaleShape, FP4_GROUP } from "./fp4.js";

export type BlockScaleKind =
  /** F8_E4M3 x F32 128x128 tiles (V3). */
  | "fp8-f32"
  /** F8_E4M3 x E8M0 128x128 tiles (V4). */
  | "fp8-e8m0"
  /** Packed FP4 x E8M0 per 32 elements of a row (V4 experts). */
  | "fp4-e8m0";

/** V4's name suffix for a block scale. */
export const E8M0_SCALE_SUFFIX = ".scale";

/** `P.scale` for a weight `P.weight` (null when the name does not end in `.weight`). */
export function e8m0ScaleNameOf(weight: string): string | null {
  return weight.endsWith(".weight") ? weight.slice(0, -".weight".length) + E8M0_SCALE_SUFFIX : null;
}

/** The weights a scale-like name could belong to, or null when `name` cannot be a block scale. */
export function weightOfBlockScale(name: string): string | null {
  const v3 = v3WeightOfScale(name);
  if (v3 !== null) return v3;
  return name.endsWith(E8M0_SCALE_SUFFIX) ? name.slice(0, -E8M0_SCALE_SUFFIX.length) + ".weight" : null;
}

export interface BlockScaleRule {
  kind: BlockScaleKind;
  /** The companion tensor's name. */
  scale: string;
  dtype: Dtype;
  /** The shape the scale must have for this weight. */
  shape: [number, number];
  /** How the grid is described in errors. */
  grid: string;
}

/**
 * The scale rules a weight of this dtype and shape may follow, in the order they are tried (the
 * first whose scale tensor exists applies). Empty: the dtype has no block scale.
 */
export function blockScaleRules(weight: string, dtype: Dtype, shape: readonly number[]): BlockScaleRule[] {
  const [rows = 0, cols = 0] = shape;
  const rules: BlockScaleRule[] = [];
  const e8m0 = e8m0ScaleNameOf(weight);
  if (dtype === "F8_E4M3") {
    rules.push({ kind: "fp8-f32", scale: v3ScaleNameOf(weight), dtype: "F32", shape: tileShape(rows, cols), grid: `ceil(rows/${FP8_BLOCK}) x ceil(cols/${FP8_BLOCK})` });
    if (e8m0) rules.push({ kind: "fp8-e8m0", scale: e8m0, dtype: "F8_E8M0", shape: tileShape(rows, cols), grid: `ceil(rows/${FP8_BLOCK}) x ceil(cols/${FP8_BLOCK})` });
  } else if (dtype === "I8" && e8m0) {
    rules.push({ kind: "fp4-e8m0", scale: e8m0, dtype: "F8_E8M0", shape: fp4ScaleShape(rows, cols), grid: `rows x (2*packed cols)/${FP4_GROUP}` });
  }
  return rules;
}
