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
 * codes carry over unchanged and the values are identical: the repack only moves bits. (The code
 * table and E8M0 bytes are ./fp4.ts and ./e8m0.ts; ggml's MXFP4 dequantizer is quant/ggml.ts.)
 */
import { E8M0_TABLE } from "./e8m0.js";
import { FP4_VALUES } from "./fp4.js";

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

/** DeepSeek's FP4 decode of `rows` x `cols` elements: E2M1[code] * 2^(e-127), in float32. */
export function decodeFp4(packed: Uint8Array, scales: Uint8Array, rows: number, cols: number, out: Float32Array): void {
  const nb = cols / 32;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const byte = packed[r * (cols / 2) + (c >> 1)]!;
      const code = c & 1 ? byte >> 4 : byte & 0x0f;
      out[r * cols + c] = FP4_VALUES[code]! * E8M0_TABLE[scales[r * nb + (c >> 5)]!]!;
    }
  }
}
