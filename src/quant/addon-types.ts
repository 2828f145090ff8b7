/**
 * Every entry point of the native addon (native/src/*.cc, each registered with DEEPCAST_EXPORT), typed
 * in one place. A new kernel adds its entry here and its name to ADDON_ENTRY_POINTS; the loader
 * (./native.ts) refuses an addon that lacks one. ggml types are passed by id (src/formats/ggml-types.ts)
 * through the ggmlQuantize / ggmlDequantize / ggmlRowBytes dispatch, so a new quantizer needs no new
 * entry point.
 */

type View = ArrayBufferView;

export type SimdLevel = "scalar" | "avx2";

export interface AddonTypes {
  /** package.json's version at build time; the loader requires it to equal the package's. */
  version(): string;

  // ---- cpu.cc / addon.cc: SIMD dispatch (all levels give identical bytes)
  simdLevel(): SimdLevel;
  /**
   * false when the CPU lacks the level. "avx512" is AVX2 for every kernel plus the GEMM's AVX-512
   * micro-kernel (gemm.cc); "avx2" turns that off; "auto" is the best the CPU has.
   */
  setSimd(level: SimdLevel | "avx512" | "auto"): boolean;
  hasAvx2(): boolean;
  /** AVX-512F: the forward pass's GEMM then runs its 16-lane kernel (identical bytes). */
  hasAvx512(): boolean;

  // ---- cast.cc: element kernels. FP8 scales are one float32 per 128x128 block.
  /** Both return the number of e4m3fn NaN codes (0x7F/0xFF) in src, counted during the cast. */
  fp8ToBf16(src: View, rows: number, cols: number, scale: View, dst: View, threads: number): number;
  fp8ToF32(src: View, rows: number, cols: number, scale: View, dst: View, threads: number, bf16Round: boolean): number;
  f32ToBf16(src: View, dst: View, threads: number): void;
  bf16ToF32(src: View, dst: View, threads: number): void;
  f32ToF16(src: View, dst: View, threads: number): void;
  f16ToF32(src: View, dst: View, threads: number): void;

  // ---- fp4.cc: DeepSeek-V4 packed FP4 experts (I8 [rows, cols/2] + one E8M0 byte per 32 of a row)
  fp4ToBf16(src: View, rows: number, cols: number, scale: View, dst: View, threads: number): void;
  /** e4m3fn codes per 128x128 tile; -1, or the index of the first tile the cast cannot make exact. */
  fp4ToFp8(src: View, rows: number, cols: number, scale: View, dst: View, threads: number): number;

  // ---- ggml_quants.cc: ggml block quantization by ggml type id; each returns bytes/values written
  /** `imatrix` holds nPerRow weights used for every row (ggml's quant_weights), or null. */
  ggmlQuantize(type: number, src: Float32Array, rows: number, nPerRow: number, dst: Uint8Array, imatrix: Float32Array | null, threads: number): number;
  ggmlDequantize(type: number, src: Uint8Array, rows: number, nPerRow: number, dst: Float32Array, threads: number): number;
  /** Bytes of one row; throws for an unsupported type or a row that is not whole blocks. */
  ggmlRowBytes(type: number, nPerRow: number): number;

  // ---- fp8_quantize.cc: FP8 rows (128x128 block scales) decoded and quantized row by row in cache
  /** The bytes of fp8ToF32(..., bf16Round) then ggmlQuantize; returns the e4m3fn NaN code count. */
  fp8Quantize(type: number, src: View, rows: number, cols: number, scale: View, dst: Uint8Array, imatrix: Float32Array | null, threads: number, bf16Round: boolean): number;

  // ---- ggml_iq2_grid.cc: the lattice tables of IQ2_XXS/IQ2_XS/IQ2_S/IQ1_S/IQ1_M (for checking against ggml)
  /** kmap (int32 per slot), neighbour records (uint16), codebook (8 bytes per entry), little-endian. */
  ggmlIqLattice(type: number): { kmap: Uint8Array; neighbours: Uint8Array; codebook: Uint8Array };

  // ---- forward.cc: the forward pass's CPU kernels
  /** y[t*ldy + o] = sum_i x[t*in + i] * w[o*in + i]. */
  f32Matmul(x: View, w: View, y: View, tokens: number, inDim: number, outDim: number, threads: number, ldy?: number): void;
  /** The same with W [out, in] in its stored ggml form (gemm.cc dequantizes it panel by panel). */
  ggmlMatmul(x: View, type: number, w: View, y: View, tokens: number, inDim: number, outDim: number, threads: number, ldy?: number): void;
  /** glibc: serve blocks up to `bytes` (at most 32 MiB) from the heap and keep freed ones for reuse; false elsewhere. */
  keepFreedMemory(bytes: number): boolean;
  causalAttention(q: View, k: View, v: View, out: View, offsets: Int32Array, heads: number, dqk: number, dv: number, scale: number, threads: number, c?: View, cOut?: View): void;
  f32SiluMul(g: View, u: View, threads: number): void;

  // ---- forward_rows.cc: the forward pass's row-wise steps, the bytes of their TypeScript twins (ops.ts)
  rmsNormRows(x: View, rows: number, dim: number, w: View, eps: number, y: View, xStride: number, yStride: number): void;
  ropeRows(x: View, rows: number, rowStride: number, offset: number, heads: number, headStride: number, dr: number, pos: Int32Array, cos: View, sin: View): void;
  addRows(x: View, y: View): void;
  mlaKv(kva: View, kvb: View, k: View, v: View, N: number, H: number, dn: number, dr: number, dv: number, kvr: number): void;
  gatherRows(x: View, rows: Int32Array, dim: number, y: View): void;
  scatterAddScaled(y: View, out: View, rows: Int32Array, scale: View, dim: number): void;

  // ---- scores.cc: out = [max, first argmax, log sum exp] of logits[off .. off + vocab), float64
  logitRowFacts(logits: View, off: number, vocab: number, out: Float64Array): void;
  /** Folds logits[r*ld .. r*ld + n) of each row into a running float64 max and sum of exp(x - max). */
  logSumExpBlock(logits: View, rows: number, n: number, ld: number, max: Float64Array, sum: Float64Array, threads: number): void;
  /** acc[off + j] += x[r*stride + j]^2 (float64, rows in order): imatrix's in_sum2. */
  addSquares(acc: Float64Array, off: number, x: View, rows: number, cols: number, stride: number): void;

  // ---- ggml_iq3.cc: the IQ3_XXS (256) / IQ3_S (512) lattice tables, for checking against ggml's
  ggmlIq3Lattice(size: 256 | 512): { grid: Uint32Array; kmap: Int32Array; neighbours: Uint16Array };

  // ---- cuda_loader.cc: dlopen of libdeepcast_cuda.so
  /** null on success, else why CUDA cannot be used ("no CUDA device: ...", "cannot load ..."). */
  cudaInit(libPath: string, device?: number): string | null;
  cudaAvailable(): boolean;
  /** "NVIDIA H200, sm_90, 132 SMs, ..." once cudaInit succeeded, else null. */
  cudaDeviceInfo(): string | null;
  /** y[t*ldy + o] = sum_i x[t*in + i] * w[o*in + i], on the GPU, float32 accumulation. */
  cudaMatmul(x: View, w: View, y: View, tokens: number, inDim: number, outDim: number, ldy?: number): void;
  /** Upload (x and W), kernel and download times of the last cudaMatmul (CUDA events), or null. */
  cudaLastTimes(): { uploadMs: number; kernelMs: number; downloadMs: number } | null;
  /** Frees the GPU buffers kept between calls. */
  cudaRelease(): void;
}

/** The names the loader checks: every key of AddonTypes (the compiler keeps the two in step). */
export const ADDON_ENTRY_POINTS = Object.keys({
  version: 0,
  simdLevel: 0,
  setSimd: 0,
  hasAvx2: 0,
  hasAvx512: 0,
  fp8ToBf16: 0,
  fp8ToF32: 0,
  f32ToBf16: 0,
  bf16ToF32: 0,
  f32ToF16: 0,
  f16ToF32: 0,
  fp4ToBf16: 0,
  fp4ToFp8: 0,
  ggmlQuantize: 0,
  ggmlDequantize: 0,
  ggmlRowBytes: 0,
  fp8Quantize: 0,
  ggmlIqLattice: 0,
  f32Matmul: 0,
  ggmlMatmul: 0,
  causalAttention: 0,
  keepFreedMemory: 0,
  f32SiluMul: 0,
  rmsNormRows: 0,
  ropeRows: 0,
  addRows: 0,
  mlaKv: 0,
  gatherRows: 0,
  scatterAddScaled: 0,
  logitRowFacts: 0,
  logSumExpBlock: 0,
  addSquares: 0,
  ggmlIq3Lattice: 0,
  cudaInit: 0,
  cudaAvailable: 0,
  cudaDeviceInfo: 0,
  cudaMatmul: 0,
  cudaLastTimes: 0,
  cudaRelease: 0,
} satisfies Record<keyof AddonTypes, 0>) as (keyof AddonTypes)[];
