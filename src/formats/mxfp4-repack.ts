/**
 * DeepSeek-V4's packed FP4 experts and ggml's MXFP4 blocks, byte for byte.
 *
 * Source (DeepSeek-V4 routed experts): an I8 weight [rows, cols/2] where byte k of a row holds element
 * 2k in the low nibble and 2k+1 in the high nibble (e2m1 codes, bit 3 the sign), and a UE8M0 scale
 * [rows, cols/32], one biased exponent e per 32 consecutive elements: value = E2M1[code] * 2^(e-127).
 *
 * ggml's block_mxfp4 (ggml-common.h): per 32 elements, the exponent byte e, then 16 bytes where byte j
 * holds element j in the low nibble and element j+16 in the high one; dequantize_row_mxfp4 reads
 * kvalues_mxfp4[code] (= 2 * E2M1[code], as int8) times GGML_E8M0_TO_FP32_HALF(e) (= 2^(e-128)), so the
 * codes carry over unchanged and the values are identical: the repack only moves bits.
 */

/** e2m1 code -> value (DeepSeek's FP4_TABLE; code 8 is +0). */
export const E2M1 = Object.freeze([0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6]);

/** ggml's kvalues_mxfp4: the int8 values a code stands for before the half scale. */
export const KVALUES_MXFP4 = Object.freeze([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]);

/** Bytes of one MXFP4 block (32 elements). */
export const MXFP4_BLOCK_BYTES = 17;

/**
 * Repacks `rows` rows of `cols` FP4 elements (`packed`: rows * cols/2 bytes; `scales`: rows * cols/32
 * exponent bytes) into ggml MXFP4 blocks (rows * cols/32 * 17 bytes, row-major).
 */
export function repackFp4ToMxfp4(packed: Uint8Array, scales: Uint8Array, rows: number, cols: number, out: Uint8Array): void {
  if (cols % 32 !== 0) throw new RangeError(`FP4 row of ${cols} values is not a multiple of 32`);
  const nb = cols / 32;
  if (packed.length < rows * (cols / 2) || scales.length < rows * nb || out.length < rows * nb * MXFP4_BLOCK_BYTES) {
    throw new RangeError("FP4 repack: buffer too small");
  }
  for (let blk = 0; blk < rows * nb; blk++) {
    const src = blk * 16; // 16 source bytes = 32 codes of this block
    const dst = blk * MXFP4_BLOCK_BYTES;
    out[dst] = scales[blk]!;
    for (let j = 0; j < 16; j++) {
      const a = packed[src + (j >> 1)]!;
      const b = packed[src + 8 + (j >> 1)]!;
      const lo = j & 1 ? a >> 4 : a & 0x0f; // element j
      const hi = j & 1 ? b >> 4 : b & 0x0f; // element j + 16
      out[dst + 1 + j] = lo | (hi << 4);
    }
  }
}

/** 2^(e-127) as float32 (E8M0; 255 is NaN in the OCP format, callers reject it first). */
export function e8m0ToF32(e: number): number {
  return e === 255 ? NaN : Math.pow(2, e - 127);
}

/** DeepSeek's FP4 decode of `rows` x `cols` elements: E2M1[code] * 2^(e-127), in float32. */
export function decodeFp4(packed: Uint8Array, scales: Uint8Array, rows: number, cols: number, out: Float32Array): void {
  const nb = cols / 32;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const byte = packed[r * (cols / 2) + (c >> 1)]!;
      const code = c & 1 ? byte >> 4 : byte & 0x0f;
      out[r * cols + c] = E2M1[code]! * e8m0ToF32(scales[r * nb + (c >> 5)]!);
    }
  }
}

/** GGML_E8M0_TO_FP32_HALF: 2^(e-128), with ggml's bit patterns for e < 2. */
function e8m0Half(e: number): number {
  return Math.pow(2, e - 128);
}

/** dequantize_row_mxfp4's arithmetic over `rows` rows of `cols` values (float32 products). */
export function dequantizeMxfp4(blocks: Uint8Array, rows: number, cols: number, out: Float32Array): void {
  const nb = (rows * cols) / 32;
  const f = new Float32Array(1);
  for (let blk = 0; blk < nb; blk++) {
    const base = blk * MXFP4_BLOCK_BYTES;
    f[0] = e8m0Half(blocks[base]!);
    const d = f[0];
    for (let j = 0; j < 16; j++) {
      const q = blocks[base + 1 + j]!;
      out[blk * 32 + j] = KVALUES_MXFP4[q & 0x0f]! * d;
      out[blk * 32 + j + 16] = KVALUES_MXFP4[q >> 4]! * d;
    }
  }
}
