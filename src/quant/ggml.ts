/**
 * ggml block quantization, byte-identical to ggml-base of llama.cpp v0.4.0 (what llama-quantize
 * writes on x86-64): Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K, IQ2_XXS IQ2_XS IQ2_S IQ1_S
 * IQ1_M, plus F32/F16/BF16.
 *
 * Without an imatrix the K-quants run ggml's `quantize_row_*_ref` (as `ggml_quantize_chunk` does
 * with `quant_weights = NULL`); with one, the weighted `quantize_row_*_impl`. Q8_0/F16/BF16/F32
 * ignore the imatrix, as ggml does. The kernels live in the native addon (native/src/ggml_*.cc);
 * without it only F32/F16/BF16 work (through the element kernels of ./kernels.ts).
 *
 * The type table is formats/ggml-types.json.
 */

import { DeepcastError } from "../errors.js";
import { readFormat } from "../formats.js";
import { kernels } from "./kernels.js";
import { loadNative, type NativeAddon } from "./native.js";

export interface GgmlQuantType {
  /** Upper-case name as llama.cpp prints it ("Q4_K", "BF16"). */
  name: string;
  /** ggml_type_name() ("q4_K", "bf16"). */
  ggmlName: string;
  /** enum ggml_type. */
  id: number;
  /** Elements per block. */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
  /** 256-element super-block type (Q2_K..Q6_K). */
  kQuant: boolean;
  /** Whether an importance matrix changes the bytes (ggml ignores it for Q8_0/F16/BF16/F32). */
  usesImatrix: boolean;
}

export type GgmlTypeRef = string | number | GgmlQuantType;

interface NativeGgml {
  ggmlQuantize(type: number, src: Float32Array, rows: number, nPerRow: number, dst: Uint8Array, imatrix: Float32Array | null, threads: number): number;
  ggmlDequantize(type: number, src: Uint8Array, rows: number, nPerRow: number, dst: Float32Array, threads: number): number;
}

let table: readonly GgmlQuantType[] | undefined;

/** ggml_quantize_requires_imatrix: ggml's quantizer asserts quant_weights for these (IQ2_XXS, IQ2_XS, IQ1_S). */
const IMATRIX_ASSERTED: ReadonlySet<number> = new Set([16, 17, 19]);

/** Whether quantizing to `type` needs an imatrix at all (quantizeRows throws IMATRIX_MISSING without one). */
export function ggmlRequiresImatrix(type: GgmlTypeRef): boolean {
  return IMATRIX_ASSERTED.has(ggmlType(type).id);
}

/** Every type this module quantizes, from formats/ggml-types.json. */
export function ggmlQuantTypes(): readonly GgmlQuantType[] {
  if (!table) {
    const json = readFormat<{ types: (GgmlQuantType & { quantizer: boolean })[] }>("ggml-types.json");
    table = Object.freeze(json.types.filter((t) => t.quantizer).map(({ quantizer: _, ...t }) => Object.freeze(t)));
  }
  return table;
}

/** Looks a type up by name (either case style, "q4_k" works too), ggml id, or returns it as is. */
export function ggmlType(t: GgmlTypeRef): GgmlQuantType {
  if (typeof t === "object") return t;
  const types = ggmlQuantTypes();
  const found = typeof t === "number" ? types.find((x) => x.id === t) : types.find((x) => x.name.toLowerCase() === t.toLowerCase());
  if (!found) {
    throw new DeepcastError(`ggml type ${JSON.stringify(t)} is not supported for quantization (supported: ${types.map((x) => x.name).join(", ")})`);
  }
  return found;
}

/** Bytes of one row of `nPerRow` values; nPerRow must be a positive multiple of the block size. */
export function rowBytes(type: GgmlTypeRef, nPerRow: number): number {
  const t = ggmlType(type);
  if (!Number.isSafeInteger(nPerRow) || nPerRow <= 0 || nPerRow % t.blockSize !== 0) {
    throw new DeepcastError(`row length ${nPerRow} is not a positive multiple of the ${t.name} block size ${t.blockSize}`);
  }
  return (nPerRow / t.blockSize) * t.typeSize;
}

function checkRows(rows: number): void {
  if (!Number.isSafeInteger(rows) || rows < 0) throw new DeepcastError(`rows must be a non-negative integer, got ${rows}`);
}

function nativeGgml(t: GgmlQuantType): NativeGgml | null {
  const n: NativeAddon | null = loadNative();
  if (n && typeof n["ggmlQuantize"] === "function") return n as unknown as NativeGgml;
  if (t.blockSize > 1) {
    throw new DeepcastError(
      `${t.name} quantization needs the native addon (build/Release/deepcast_native.node), which is not built or is disabled (DEEPCAST_NATIVE=0); run \`npm rebuild deepcast\` or \`node-gyp rebuild\``,
    );
  }
  return null;
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
  const t = ggmlType(type);
  checkRows(rows);
  const rb = rowBytes(t, nPerRow);
  if (src.length !== rows * nPerRow) throw new DeepcastError(`src has ${src.length} values, expected ${rows} x ${nPerRow}`);
  if (imatrix && imatrix.length !== nPerRow) throw new DeepcastError(`imatrix has ${imatrix.length} values, expected nPerRow = ${nPerRow}`);
  if (!imatrix && IMATRIX_ASSERTED.has(t.id)) {
    throw new DeepcastError(`${t.name} quantization needs an importance matrix (ggml's ${t.name} quantizer requires one); pass one with --imatrix`, { code: "IMATRIX_MISSING" });
  }
  const out = dst ?? new Uint8Array(rows * rb);
  if (out.length !== rows * rb) throw new DeepcastError(`dst has ${out.length} bytes, expected ${rows * rb}`);
  const n = nativeGgml(t);
  if (n) {
    n.ggmlQuantize(t.id, src, rows, nPerRow, out, imatrix, threads);
    return out;
  }
  // F32 / F16 / BF16 without the addon.
  if (t.id === 0) {
    out.set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength));
    return out;
  }
  const h = new Uint16Array(src.length);
  if (t.id === 1) kernels().f32ToF16(src, h, threads);
  else kernels().f32ToBf16(src, h, threads);
  out.set(new Uint8Array(h.buffer));
  return out;
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
  const t = ggmlType(type);
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
  if (t.id === 0) {
    new Uint8Array(out.buffer, out.byteOffset, out.byteLength).set(src);
    return out;
  }
  if (t.id === 1) kernels().f16ToF32(u16View(src), out, threads);
  else kernels().bf16ToF32(u16View(src), out, threads);
  return out;
}
