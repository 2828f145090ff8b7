/**
 * OCP E8M0 scale bytes (safetensors dtype F8_E8M0; DeepSeek-V4's `.scale` tensors): byte `e` stands
 * for 2^(e-127), exactly representable in float32 for every e in 0..254 (e = 0 is the subnormal
 * 2^-127). Byte 255 is the format's NaN; deepcast refuses it as corrupt input.
 */
import { DeepcastError } from "../errors.js";

/** The E8M0 NaN byte. */
export const E8M0_NAN = 255;

/** Largest E8M0 byte whose scale keeps the largest e4m3fn value (448) finite: 448 * 2^119 < 2^128. */
export const E8M0_MAX_FOR_FP8 = 246;

/** 2^(e-127) as a float32 value (exact); NaN for 255. */
export function e8m0ToF32(e: number): number {
  if (e === E8M0_NAN) return NaN;
  return 2 ** (e - 127);
}

/** Every byte as float32 (index 255 is NaN). */
export const E8M0_TABLE: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let e = 0; e < 256; e++) t[e] = e8m0ToF32(e);
  return t;
})();

/**
 * Throws BAD_SCALE naming the file, the tensor and the first position when `bytes` (a scale tensor
 * of `cols` columns, starting at row `row0`) holds the NaN byte 255, or a byte above `maxByte`
 * (a scale so large that the weight's largest value times it overflows float32).
 */
export function checkE8m0(bytes: Uint8Array, cols: number, where: { file: string; tensor: string }, maxByte = 254, row0 = 0): void {
  for (let i = 0; i < bytes.length; i++) {
    const e = bytes[i]!;
    if (e <= maxByte) continue;
    const at = `[${row0 + Math.floor(i / cols)}, ${i % cols}]`;
    throw new DeepcastError(
      e === E8M0_NAN
        ? `E8M0 scale byte 255 (NaN) at ${at}: the checkpoint is corrupt`
        : `E8M0 scale byte ${e} (2^${e - 127}) at ${at} is absurdly large: the weight's values overflow float32 and BF16`,
      { ...where, code: "BAD_SCALE" });
  }
}

/** float32 scales of E8M0 bytes (after checkE8m0, so all finite). */
export function e8m0ToF32Array(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = E8M0_TABLE[bytes[i]!]!;
  return out;
}
