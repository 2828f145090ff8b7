/**
 * The forward pass's GEMM (native/src/gemm.cc) on its own: W read in its stored ggml form gives the
 * bytes of W dequantized first; the AVX2 kernel and its scalar twin, and any thread count, give
 * the same bytes; and both stay within float32 rounding of a float64 reference.
 */
import { afterAll, describe, expect, it } from "vitest";
import { selectBackend } from "../src/model/backend.js";
import { forwardOps, tsOps } from "../src/model/ops.js";
import { ggmlType } from "../src/formats/ggml-types.js";
import { dequantizeRows, quantizeRows } from "../src/quant/ggml.js";
import { loadNative } from "../src/quant/native.js";

const native = loadNative();
const ops = forwardOps();

function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

// [tokens, in, out]: tails in every dimension (tokens % 6, out % 16, in % 256 with several panels).
const SHAPES = [[1, 256, 1], [7, 256, 17], [13, 512, 40], [250, 768, 33], [64, 256, 256]] as const;
const TYPES = ["F32", "F16", "BF16", "Q4_0", "Q8_0", "Q4_K", "Q6_K", "Q2_K"];

describe.runIf(native !== null && ops.matmulStored !== undefined)("GEMM from stored ggml weights", () => {
  afterAll(() => {
    native?.setSimd("auto");
  });

  it("equals the float32 GEMM on the dequantized weight, byte for byte, with strided output", () => {
    for (const type of TYPES) {
      for (const [T, inD, out] of SHAPES) {
        const w = rand(out * inD, out * 7 + inD);
        const x = rand(T * inD, T + 3);
        const data = quantizeRows(type, w, out, inD);
        const wf = dequantizeRows(type, data, out, inD);
        const ldy = out + 5;
        const want = new Float32Array(T * ldy).fill(3);
        ops.matmul(x, wf, want, T, inD, out, 2, ldy);
        const got = new Float32Array(T * ldy).fill(3);
        ops.matmulStored!(x, { type: ggmlType(type).id, data, rows: out, cols: inD }, got, T, inD, out, 2, ldy);
        expect(bytes(got).equals(bytes(want)), `${type} ${T}x${inD}x${out}`).toBe(true);
        // Columns past `out` in each strided row are left alone.
        for (let t = 0; t < T; t++) for (let c = out; c < ldy; c++) expect(got[t * ldy + c]).toBe(3);
      }
    }
  });

  it("gives the same bytes for 1, 2 and 3 threads and for the AVX-512, AVX2 and scalar kernels", () => {
    const levels: ("avx512" | "avx2" | "scalar")[] = native!.hasAvx2() ? ["avx2", "scalar"] : ["scalar"];
    if (native!.hasAvx512()) levels.unshift("avx512");
    // 12-token tiles of the AVX-512 kernel: 23 and 500 leave tails of every size class, 500 spans two token blocks.
    for (const [T, inD, out] of [...SHAPES, [300, 256, 8], [5, 256, 300], [23, 512, 31], [500, 256, 48]] as const) {
      const w = rand(out * inD, 11 + out);
      const x = rand(T * inD, 5 + T);
      const data = quantizeRows("Q8_0", w, out, inD);
      let ref: Buffer | undefined;
      for (const level of levels) {
        expect(native!.setSimd(level)).toBe(true);
        for (const threads of [1, 2, 3]) {
          const y = new Float32Array(T * out);
          ops.matmulStored!(x, { type: ggmlType("Q8_0").id, data, rows: out, cols: inD }, y, T, inD, out, threads);
          ref ??= Buffer.from(bytes(y));
          expect(bytes(y).equals(ref), `${level} ${threads} threads ${T}x${inD}x${out}`).toBe(true);
        }
      }
      native!.setSimd("auto");
    }
  });

  it("stays within float32 rounding of a float64-accumulated matmul", () => {
    const [T, inD, out] = [37, 1024, 70];
    const w = rand(out * inD, 1);
    const x = rand(T * inD, 2);
    const ref = new Float32Array(T * out);
    tsOps.matmul(x, w, ref, T, inD, out, 1);
    const y = new Float32Array(T * out);
    ops.matmul(x, w, y, T, inD, out, 2);
    let d = 0;
    let m = 0;
    for (let i = 0; i < y.length; i++) {
      d = Math.max(d, Math.abs(y[i]! - ref[i]!));
      m = Math.max(m, Math.abs(ref[i]!));
    }
    expect(d / m).toBeLessThan(1e-5);
  });

  it("is what the CPU backend uses (selectBackend keeps the stored-form matmul)", () => {
    expect(selectBackend("cpu").matmulStored).toBeDefined();
  });

  it("rejects a weight whose size does not match the shape", () => {
    const data = quantizeRows("Q8_0", rand(4 * 64, 1), 4, 64);
    const y = new Float32Array(2 * 4);
    expect(() => ops.matmulStored!(rand(2 * 64, 2), { type: 8, data: data.subarray(1), rows: 4, cols: 64 }, y, 2, 64, 4, 1)).toThrow(/bytes, expected/);
    expect(() => ops.matmulStored!(rand(2 * 64, 2), { type: 8, data, rows: 4, cols: 64 }, y, 2, 64, 5, 1)).toThrow(/expected \[5, 64\]/);
  });
});
