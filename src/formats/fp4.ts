/**
 * DeepSeek-V4's packed FP4 routed-expert weights: safetensors I8 [rows, cols/2], two e2m1 codes per
 * byte along the input (column) axis, element 2k in the low nibble and 2k+1 in the high nibble, with
 * one E8M0 scale byte per 32 consecutive elements of a row (`.scale` F8_E8M0 [rows, cols/32]).
 * Value = FP4_VALUES[code] * 2^(e-127). Code 8 is +0 (DeepSeek's table and ggml's kvalues_mxfp4
 * agree; a native float4 cast would give -0).
 */

/** Elements per scale byte. */
export const FP4_GROUP = 32;

/** e2m1 code -> value; bit 3 is the sign, code 8 is +0. */
export const FP4_VALUES: readonly number[] = Object.freeze([0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6]);

/** Largest |value| of a code. */
export const FP4_MAX = 6;

/** Largest E8M0 byte whose scale keeps 6 * 2^(e-127) finite in float32 and BF16. */
export const FP4_MAX_SCALE_BYTE = 252;

/** Logical [rows, cols] of a packed [rows, cols/2] I8 tensor. */
export function fp4LogicalShape(packed: readonly number[]): [number, number] {
  return [packed[0]!, packed[1]! * 2];
}

/** Shape of the `.scale` of a packed [rows, packedCols] weight. */
export function fp4ScaleShape(rows: number, packedCols: number): [number, number] {
  return [rows, Math.ceil((packedCols * 2) / FP4_GROUP)];
}
