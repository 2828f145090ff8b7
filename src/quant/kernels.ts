/**
 * The element kernels every command uses, from the native addon when it is built, else from the
 * pure-TypeScript twins below (same bytes, slower). Buffers are caller-owned and reused.
 */
import { FP8_BLOCK } from "../formats/fp8.js";
import { loadNative } from "./native.js";
import { bf16FromF32Bits, f16ToF32, f32ToF16, FP8_E4M3_TABLE } from "./floats.js";

export interface Kernels {
  readonly backend: "native" | "ts";
  /** "avx2" or "scalar" for the native backend, "ts" otherwise. */
  simd(): string;
  /** FP8 e4m3fn [rows, cols] x F32 scale [ceil(rows/128), ceil(cols/128)] -> BF16 (one f32 multiply, RNE). */
  fp8ToBf16(src: Uint8Array, rows: number, cols: number, scale: Float32Array, dst: Uint16Array, threads: number): void;
  /** Same product as f32; with `bf16Round`, the value a BF16 intermediate would hold. */
  fp8ToF32(src: Uint8Array, rows: number, cols: number, scale: Float32Array, dst: Float32Array, threads: number, bf16Round: boolean): void;
  f32ToBf16(src: Float32Array, dst: Uint16Array, threads: number): void;
  bf16ToF32(src: Uint16Array, dst: Float32Array, threads: number): void;
  f32ToF16(src: Float32Array, dst: Uint16Array, threads: number): void;
  f16ToF32(src: Uint16Array, dst: Float32Array, threads: number): void;
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
    for (let r = 0; r < rows; r++) {
      const sBase = Math.floor(r / FP8_BLOCK) * scaleCols;
      for (let c = 0, i = r * cols; c < cols; c++, i++) {
        prod[0] = FP8_E4M3_TABLE[src[i]!]! * scale[sBase + Math.floor(c / FP8_BLOCK)]!;
        dst[i] = bf16FromF32Bits(bits[0]!);
      }
    }
  },
  fp8ToF32(src, rows, cols, scale, dst, _threads, bf16Round) {
    const scaleCols = checkFp8(src, rows, cols, scale, dst.length);
    const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
    for (let r = 0; r < rows; r++) {
      const sBase = Math.floor(r / FP8_BLOCK) * scaleCols;
      for (let c = 0, i = r * cols; c < cols; c++, i++) {
        dst[i] = FP8_E4M3_TABLE[src[i]!]! * scale[sBase + Math.floor(c / FP8_BLOCK)]!;
        if (bf16Round) out[i] = bf16FromF32Bits(out[i]!) << 16;
      }
    }
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
};

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
  };
}

let chosen: Kernels | undefined;

/** The native kernels when the addon is built, else the TypeScript ones. */
export function kernels(): Kernels {
  chosen ??= nativeKernels() ?? tsKernels;
  return chosen;
}
