/**
 * The element kernels every command uses, from the native addon when it is built, else from the
 * pure-TypeScript twins below (same bytes, slower). Buffers are caller-owned and reused.
 */
import { DeepcastError } from "../errors.js";
import { FP8_BLOCK } from "../formats/fp8.js";
import { loadNative } from "./native.js";
import { bf16FromF32Bits, f16ToF32, f32ToBf16, f32ToF16, FP8_E4M3_TABLE } from "./floats.js";
import { FP4_GROUP, FP4_VALUES } from "../formats/fp4.js";
import { E8M0_TABLE } from "../formats/e8m0.js";

export interface Kernels {
  readonly backend: "native" | "ts";
  /** "avx2" or "scalar" for the native backend, "ts" otherwise. */
  simd(): string;
  /**
   * FP8 e4m3fn [rows, cols] x F32 scale [ceil(rows/128), ceil(cols/128)] -> BF16 (one f32 multiply, RNE).
   * Returns how many codes were e4m3fn NaN (0x7F/0xFF), counted during the cast.
   */
  fp8ToBf16(src: Uint8Array, rows: number, cols: number, scale: Float32Array, dst: Uint16Array, threads: number): number;
  /** Same product as f32; with `bf16Round`, the value a BF16 intermediate would hold. Returns the NaN-code count. */
  fp8ToF32(src: Uint8Array, rows: number, cols: number, scale: Float32Array, dst: Float32Array, threads: number, bf16Round: boolean): number;
  f32ToBf16(src: Float32Array, dst: Uint16Array, threads: number): void;
  bf16ToF32(src: Uint16Array, dst: Float32Array, threads: number): void;
  f32ToF16(src: Float32Array, dst: Uint16Array, threads: number): void;
  f16ToF32(src: Uint16Array, dst: Float32Array, threads: number): void;
  /**
   * Packed FP4 [rows, cols] (src: rows*cols/2 bytes, element 2k in the low nibble) x E8M0 scale per 32
   * elements of a row -> BF16: e2m1(code) * 2^(e-127), exact (code 8 is +0). Scales must hold no 255.
   */
  fp4ToBf16(src: Uint8Array, rows: number, cols: number, scale: Uint8Array, dst: Uint16Array, threads: number): void;
  /**
   * The same to e4m3fn codes [rows, cols] by 128x128 tiles (cast_e2m1fn_to_e4m3fn; the tile scales are
   * fp4TileScales'): -1 when every tile is exact, else the index (tileRow * tileCols + tileCol) of the first
   * tile that is not, and the output is incomplete.
   */
  fp4ToFp8(src: Uint8Array, rows: number, cols: number, scale: Uint8Array, dst: Uint8Array, threads: number): number;
}

function checkFp8(src: Uint8Array, rows: number, cols: number, scale: Float32Array, dstLen: number): number {
  const scaleCols = Math.ceil(cols / FP8_BLOCK);
  if (src.length !== rows * cols) throw new RangeError(`src has ${src.length} bytes, expected ${rows * cols}`);
  if (scale.length !== Math.ceil(rows / FP8_BLOCK) * scaleCols) {
    throw new RangeError(`scale has ${scale.length} values, expected ${Math.ceil(rows / FP8_BLOCK) * scaleCols}`);
  }
  if (dstLen !== rows * cols) throw new RangeError("dst has the wrong size");
  return scaleCols;
}

/** Pure-TypeScript kernels: single-threaded, bit-identical to the native ones. */
export const tsKernels: Kernels = {
  backend: "ts",
  simd: () => "ts",
  fp8ToBf16(src, rows, cols, scale, dst) {
    const scaleCols = checkFp8(src, rows, cols, scale, dst.length);
    const prod = new Float32Array(1);
    const bits = new Uint32Array(prod.buffer);
    let nan = 0;
    for (let r = 0; r < rows; r++) {
      const sBase = Math.floor(r / FP8_BLOCK) * scaleCols;
      for (let c = 0, i = r * cols; c < cols; c++, i++) {
        if ((src[i]! & 0x7f) === 0x7f) nan++;
        prod[0] = FP8_E4M3_TABLE[src[i]!]! * scale[sBase + Math.floor(c / FP8_BLOCK)]!;
        dst[i] = bf16FromF32Bits(bits[0]!);
      }
    }
    return nan;
  },
  fp8ToF32(src, rows, cols, scale, dst, _threads, bf16Round) {
    const scaleCols = checkFp8(src, rows, cols, scale, dst.length);
    const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
    let nan = 0;
    for (let r = 0; r < rows; r++) {
      const sBase = Math.floor(r / FP8_BLOCK) * scaleCols;
      for (let c = 0, i = r * cols; c < cols; c++, i++) {
        if ((src[i]! & 0x7f) === 0x7f) nan++;
        dst[i] = FP8_E4M3_TABLE[src[i]!]! * scale[sBase + Math.floor(c / FP8_BLOCK)]!;
        if (bf16Round) out[i] = bf16FromF32Bits(out[i]!) << 16;
      }
    }
    return nan;
  },
  f32ToBf16(src, dst) {
    if (dst.length !== src.length) throw new RangeError("src/dst sizes do not match");
    const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
    for (let i = 0; i < src.length; i++) dst[i] = bf16FromF32Bits(bits[i]!);
  },
  bf16ToF32(src, dst) {
    if (dst.length !== src.length) throw new RangeError("src/dst sizes do not match");
    const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
    for (let i = 0; i < src.length; i++) out[i] = src[i]! << 16;
  },
  f32ToF16(src, dst) {
    if (dst.length !== src.length) throw new RangeError("src/dst sizes do not match");
    for (let i = 0; i < src.length; i++) dst[i] = f32ToF16(src[i]!);
  },
  f16ToF32(src, dst) {
    if (dst.length !== src.length) throw new RangeError("src/dst sizes do not match");
    for (let i = 0; i < src.length; i++) dst[i] = f16ToF32(src[i]!);
  },
  fp4ToBf16(src, rows, cols, scale, dst) {
    checkFp4(src, rows, cols, scale, dst.length);
    const groups = cols / FP4_GROUP;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const b = src[(r * cols + c) >> 1]!;
        const code = c & 1 ? b >> 4 : b & 15;
        dst[r * cols + c] = f32ToBf16(FP4_VALUES[code]! * E8M0_TABLE[scale[r * groups + Math.floor(c / FP4_GROUP)]!]!);
      }
    }
  },
  fp4ToFp8(src, rows, cols, scale, dst) {
    checkFp4(src, rows, cols, scale, dst.length);
    const groups = cols / FP4_GROUP;
    const tilesC = Math.ceil(cols / FP8_BLOCK);
    for (let tr = 0; tr * FP8_BLOCK < rows; tr++) {
      for (let tc = 0; tc < tilesC; tc++) {
        const r0 = tr * FP8_BLOCK, r1 = Math.min(rows, r0 + FP8_BLOCK);
        const g0 = (tc * FP8_BLOCK) / FP4_GROUP, g1 = Math.min(groups, g0 + FP8_BLOCK / FP4_GROUP);
        let emax = 0;
        for (let r = r0; r < r1; r++) for (let g = g0; g < g1; g++) emax = Math.max(emax, scale[r * groups + g]!);
        if (emax < 6) return tr * tilesC + tc;
        for (let r = r0; r < r1; r++) {
          for (let g = g0; g < g1; g++) {
            const k = scale[r * groups + g]! - emax + 6;
            for (let j = 0; j < FP4_GROUP; j++) {
              const i = r * cols + g * FP4_GROUP + j;
              const b = src[i >> 1]!;
              const code = j & 1 ? b >> 4 : b & 15;
              if (k < -8) {
                if (code & 7) return tr * tilesC + tc;
                dst[i] = 0;
              } else {
                dst[i] = fp8CodeOf(FP4_VALUES[code]! * 2 ** k);
              }
            }
          }
        }
      }
    }
    return -1;
  },
};

function checkFp4(src: Uint8Array, rows: number, cols: number, scale: Uint8Array, dstLen: number): void {
  if (cols % FP4_GROUP !== 0) throw new RangeError(`cols must be a multiple of ${FP4_GROUP}, got ${cols}`);
  if (src.length * 2 !== rows * cols) throw new RangeError(`src has ${src.length} bytes, expected ${(rows * cols) / 2}`);
  if (scale.length !== (rows * cols) / FP4_GROUP) throw new RangeError(`scale has ${scale.length} bytes, expected ${(rows * cols) / FP4_GROUP}`);
  if (dstLen !== rows * cols) throw new RangeError("dst has the wrong size");
}

/** The e4m3fn code of a value it represents exactly (+0 for zero of either sign). */
function fp8CodeOf(v: number): number {
  if (v === 0) return 0;
  const code = FP8_E4M3_TABLE.indexOf(Math.abs(v));
  if (code < 0 || code >= 0x7f) throw new Error(`internal: ${v} is not an e4m3fn value`);
  return v < 0 ? code | 0x80 : code;
}

function nativeKernels(): Kernels | null {
  const n = loadNative();
  if (!n) return null;
  return {
    backend: "native",
    simd: () => n.simdLevel(),
    fp8ToBf16: (src, rows, cols, scale, dst, threads) => n.fp8ToBf16(src, rows, cols, scale, dst, threads),
    fp8ToF32: (src, rows, cols, scale, dst, threads, round) => n.fp8ToF32(src, rows, cols, scale, dst, threads, round),
    f32ToBf16: (src, dst, threads) => n.f32ToBf16(src, dst, threads),
    bf16ToF32: (src, dst, threads) => n.bf16ToF32(src, dst, threads),
    f32ToF16: (src, dst, threads) => n.f32ToF16(src, dst, threads),
    f16ToF32: (src, dst, threads) => n.f16ToF32(src, dst, threads),
    fp4ToBf16: (src, rows, cols, scale, dst, threads) => n.fp4ToBf16(src, rows, cols, scale, dst, threads),
    fp4ToFp8: (src, rows, cols, scale, dst, threads) => n.fp4ToFp8(src, rows, cols, scale, dst, threads),
  };
}

let chosen: Kernels | undefined;

/** The native kernels when the addon is built, else the TypeScript ones. */
export function kernels(): Kernels {
  chosen ??= nativeKernels() ?? tsKernels;
  return chosen;
}

/**
 * The error for FP8 NaN codes (0x7F/0xFF) a cast counted in `codes` ([rows, cols] starting at row
 * `row0` of the tensor): names the tensor and the first element. Only runs when the count is non-zero.
 */
export function fp8NanError(count: number, codes: Uint8Array, row0: number, cols: number, where: { file: string; tensor: string }): DeepcastError {
  const i = codes.findIndex((c) => (c & 0x7f) === 0x7f);
  const at = i >= 0 ? ` (the first at row ${row0 + Math.floor(i / cols)}, column ${i % cols})` : "";
  return new DeepcastError(
    `${count} FP8 NaN code(s) 0x7F/0xFF in the weight${at}: the checkpoint is corrupt; pass --allow-non-finite to keep them as NaN`,
    { ...where, code: "NON_FINITE" });
}

/** Largest |scale| whose product with the largest e4m3fn value (448) still fits a BF16/F32. */
const MAX_FP8_SCALE = 3.3895313892515355e38 / 448;

/**
 * FP8 block scales must be finite, non-negative and small enough that scale * 448 stays finite:
 * anything else turns whole 128x128 blocks into NaN or Inf. Scales are a 16384th of the weight,
 * so this check costs nothing next to the cast.
 */
export function checkFp8ScaleValues(scale: Float32Array, scaleCols: number, where: { file: string; tensor: string }): void {
  for (let i = 0; i < scale.length; i++) {
    const s = scale[i]!;
    if (s >= 0 && s <= MAX_FP8_SCALE) continue;
    const block = `block [${Math.floor(i / scaleCols)}, ${i % scaleCols}]`;
    throw new DeepcastError(
      Number.isFinite(s)
        ? `FP8 block scale ${s} at ${block} is ${s < 0 ? "negative" : "absurdly large (x448 overflows)"}; pass --allow-non-finite to use it anyway`
        : `FP8 block scale ${s} at ${block} is not finite; pass --allow-non-finite to keep the NaN/Inf values it makes`,
      { ...where, code: Number.isFinite(s) ? "BAD_SCALE" : "NON_FINITE" });
  }
}
