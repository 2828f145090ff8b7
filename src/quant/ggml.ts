/**
 * ggml block quantization, byte-identical to ggml-base of llama.cpp v0.4.0 (what llama-quantize
 * writes on x86-64): Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K, IQ1_S IQ1_M IQ2_XXS IQ2_XS
 * IQ2_S IQ3_XXS IQ3_S IQ4_NL IQ4_XS TQ1_0 TQ2_0, plus F32/F16/BF16; MXFP4 is dequantized only.
 *
 * Without an imatrix the K-quants run ggml's `quantize_row_*_ref` (as `ggml_quantize_chunk` does
 * with `quant_weights = NULL`); with one, the weighted `quantize_row_*_impl`. Q8_0/F16/BF16/F32
 * ignore the imatrix, as ggml does; the IQ types have one quantizer that takes it or not, and
 * TQ1_0/TQ2_0 ignore it. The kernels live in the native addon (native/src/ggml_*.cc);
 * without it only F32/F16/BF16 work (through the element kernels of ./kernels.ts).
 *
 * The type table is src/formats/ggml-types.ts.
 */

import { DeepcastError } from "../errors.js";
import { ggmlDequantType, ggmlQuantType, rowBytes, type GgmlType, type GgmlTypeRef } from "../formats/ggml-types.js";
import { FP8_BLOCK } from "../formats/fp8.js";
import { kernels, type Kernels } from "./kernels.js";
import { loadNative, nativeMissingReason, type NativeAddon } from "./native.js";

/**
 * ggml_quantize_requires_imatrix: ggml's quantizer itself asserts quant_weights for these (IQ2_XXS,
 * IQ2_XS, IQ1_S). Narrower than the type table's imatrix "required" (llama-quantize's rule, which
 * also covers IQ2_S, IQ1_M and IQ3_XXS that ggml quantizes without one).
 */
const IMATRIX_ASSERTED: ReadonlySet<number> = new Set([16, 17, 19]);

/** Whether quantizeRows needs an imatrix for `type` (it throws IMATRIX_MISSING without one). */
export function ggmlRequiresImatrix(type: GgmlTypeRef): boolean {
  return IMATRIX_ASSERTED.has(ggmlQuantType(type).id);
}

function checkRows(rows: number): void {
  if (!Number.isSafeInteger(rows) || rows < 0) throw new DeepcastError(`rows must be a non-negative integer, got ${rows}`);
}

/** An imatrix must hold one weight per column; the types ggml asserts one for must have it. */
function checkImatrix(t: GgmlType, imatrix: Float32Array | null, nPerRow: number): void {
  if (imatrix && imatrix.length !== nPerRow) throw new DeepcastError(`imatrix has ${imatrix.length} values, expected nPerRow = ${nPerRow}`);
  if (!imatrix && IMATRIX_ASSERTED.has(t.id)) {
    throw new DeepcastError(`${t.name} quantization needs an importance matrix (ggml's ${t.name} quantizer requires one); pass one with --imatrix`, { code: "IMATRIX_MISSING" });
  }
}

/** The addon, or null for F32/F16/BF16 without it; a block type without it is an error. */
function nativeGgml(t: GgmlType): NativeAddon | null {
  const n = loadNative();
  if (n || !t.quantized) return n;
  throw new DeepcastError(`${t.name} quantization needs the native addon: ${nativeMissingReason()}`, { code: "NATIVE_UNAVAILABLE" });
}

/** A 2-byte-aligned Uint16Array over `bytes` (copied only when the view is misaligned). */
function u16View(bytes: Uint8Array): Uint16Array {
  if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  return new Uint16Array(bytes.slice().buffer);
}

/**
 * Quantizes `rows` rows of `nPerRow` float32 values to ggml blocks, row-major, no padding
 * (`rows * rowBytes(type, nPerRow)` bytes). `imatrix` holds nPerRow importance weights used for
 * every row (ggml's quant_weights), or null. Rows are split across `threads` threads; the bytes do
 * not depend on the thread count.
 */
export function quantizeRows(
  type: GgmlTypeRef,
  src: Float32Array,
  rows: number,
  nPerRow: number,
  imatrix: Float32Array | null = null,
  threads = 1,
  dst?: Uint8Array,
): Uint8Array {
  const t = ggmlQuantType(type);
  checkRows(rows);
  const rb = rowBytes(t, nPerRow);
  if (src.length !== rows * nPerRow) throw new DeepcastError(`src has ${src.length} values, expected ${rows} x ${nPerRow}`);
  checkImatrix(t, imatrix, nPerRow);
  const out = dst ?? new Uint8Array(rows * rb);
  if (out.length !== rows * rb) throw new DeepcastError(`dst has ${out.length} bytes, expected ${rows * rb}`);
  const n = nativeGgml(t);
  if (n) {
    n.ggmlQuantize(t.id, src, rows, nPerRow, out, imatrix, threads);
    return out;
  }
  // F32 / F16 / BF16 without the addon.
  if (t.name === "F32") {
    out.set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength));
    return out;
  }
  const h = new Uint16Array(src.length);
  if (t.name === "F16") kernels().f32ToF16(src, h, threads);
  else kernels().f32ToBf16(src, h, threads);
  out.set(new Uint8Array(h.buffer));
  return out;
}

/**
 * FP8 e4m3fn codes [rows, cols] with their block scales (float32 [ceil(rows/128), ceil(cols/128)])
 * quantized to `type`: the bytes of `k.fp8ToF32(..., bf16Round)` followed by quantizeRows. With the
 * native kernels each row is decoded and quantized while it is in cache (fp8Quantize); otherwise
 * through a float32 buffer. Returns how many codes were e4m3fn NaN (0x7F/0xFF).
 */
export function quantizeFp8Rows(
  type: GgmlTypeRef,
  codes: Uint8Array,
  rows: number,
  cols: number,
  scale: Float32Array,
  opts: { bf16Round: boolean; imatrix: Float32Array | null; threads: number; kernels: Kernels },
  dst: Uint8Array,
): number {
  const t = ggmlQuantType(type);
  checkRows(rows);
  const rb = rowBytes(t, cols);
  if (codes.length !== rows * cols) throw new DeepcastError(`src has ${codes.length} bytes, expected ${rows} x ${cols}`);
  if (scale.length !== Math.ceil(rows / FP8_BLOCK) * Math.ceil(cols / FP8_BLOCK)) {
    throw new DeepcastError(`scale has ${scale.length} values, expected ${Math.ceil(rows / FP8_BLOCK)} x ${Math.ceil(cols / FP8_BLOCK)}`);
  }
  if (dst.length !== rows * rb) throw new DeepcastError(`dst has ${dst.length} bytes, expected ${rows * rb}`);
  const n = opts.kernels.backend === "native" ? loadNative() : null;
  if (n) {
    checkImatrix(t, opts.imatrix, cols);
    return n.fp8Quantize(t.id, codes, rows, cols, scale, dst, opts.imatrix, opts.threads, opts.bf16Round);
  }
  const values = new Float32Array(rows * cols);
  const nan = opts.kernels.fp8ToF32(codes, rows, cols, scale, values, opts.threads, opts.bf16Round);
  quantizeRows(t, values, rows, cols, opts.imatrix, opts.threads, dst);
  return nan;
}

/** ggml's dequantize_row_* over `rows` rows: the float32 values the bytes stand for. */
export function dequantizeRows(
  type: GgmlTypeRef,
  src: Uint8Array,
  rows: number,
  nPerRow: number,
  threads = 1,
  dst?: Float32Array,
): Float32Array {
  const t = ggmlDequantType(type);
  checkRows(rows);
  const rb = rowBytes(t, nPerRow);
  if (src.length !== rows * rb) throw new DeepcastError(`src has ${src.length} bytes, expected ${rows} x ${rb}`);
  const out = dst ?? new Float32Array(rows * nPerRow);
  if (out.length !== rows * nPerRow) throw new DeepcastError(`dst has ${out.length} values, expected ${rows * nPerRow}`);
  const n = nativeGgml(t);
  if (n) {
    n.ggmlDequantize(t.id, src, rows, nPerRow, out, threads);
    return out;
  }
  if (t.name === "F32") {
    new Uint8Array(out.buffer, out.byteOffset, out.byteLength).set(src);
    return out;
  }
  if (t.name === "F16") kernels().f16ToF32(u16View(src), out, threads);
  else kernels().bf16ToF32(u16View(src), out, threads);
  return out;
}

/** Rows of `values` for a row length, or a clear error. */
function rowsOf(count: number, nPerRow: number, what: string): number {
  if (!Number.isSafeInteger(nPerRow) || nPerRow <= 0 || count % nPerRow !== 0) {
    throw new DeepcastError(`${what} of ${count} does not divide into rows of ${nPerRow}`, { code: "USAGE" });
  }
  return count / nPerRow;
}

/**
 * The library's kernel entry point: quantizes `values` (whole rows of `nPerRow`) to the ggml type
 * named as llama.cpp names it ('Q4_K', 'IQ2_XXS', 'BF16', ...; case-insensitive), byte-identical to
 * ggml's quantizer. `imatrix`: nPerRow importance weights (required by IQ1_S, IQ2_XXS, IQ2_XS).
 */
export function quantize(type: string, values: Float32Array, nPerRow: number, opts: { imatrix?: Float32Array; threads?: number } = {}): Uint8Array {
  return quantizeRows(type, values, rowsOf(values.length, nPerRow, "a value count"), nPerRow, opts.imatrix ?? null, opts.threads ?? 1);
}

/** ggml's dequantizer: the float32 values `bytes` (whole rows of `nPerRow` values of `type`) stand for. */
export function dequantize(type: string, bytes: Uint8Array, nPerRow: number, opts: { threads?: number } = {}): Float32Array {
  const rb = rowBytes(ggmlDequantType(type), nPerRow);
  return dequantizeRows(type, bytes, rowsOf(bytes.length, rb, "a byte count"), nPerRow, opts.threads ?? 1);
}
