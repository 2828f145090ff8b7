/**
 * DeepSeek-V3's FP8 weight format: e4m3 values with one float32 inverse scale per 128x128 block,
 * stored as the companion tensor `<weight>_scale_inv` ([ceil(rows/128), ceil(cols/128)]).
 */

/** Rows and columns of one scale block. */
export const FP8_BLOCK = 128;

/** Name suffix of a weight's block-scale companion. */
export const SCALE_SUFFIX = "_scale_inv";

/** The scale tensor of `weight`. */
export function scaleNameOf(weight: string): string {
  return weight + SCALE_SUFFIX;
}

/** The weight a scale tensor belongs to, or null when `name` is not a scale tensor. */
export function weightOfScale(name: string): string | null {
  return name.endsWith(SCALE_SUFFIX) ? name.slice(0, -SCALE_SUFFIX.length) : null;
}

/** Shape of the scale tensor of a [rows, cols] weight. */
export function scaleShape(rows: number, cols: number): [number, number] {
  return [Math.ceil(rows / FP8_BLOCK), Math.ceil(cols / FP8_BLOCK)];
}
