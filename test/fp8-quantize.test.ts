/**
 * quantizeFp8Rows (native fp8Quantize: each FP8 row decoded and quantized while in cache) gives the
 * bytes of the two-step path it replaces in to-gguf, fp8ToF32 then quantizeRows, for every kind of
 * output type, with and without BF16 rounding and an imatrix, at both SIMD levels and several thread
 * counts, on codes that include NaN codes, zeros, subnormals and 448, with block scales of every kind.
 */
import { describe, expect, it } from "vitest";

import { DeepcastError } from "../src/errors.js";
import { ggmlQuantType, rowBytes } from "../src/formats/ggml-types.js";
import { quantizeFp8Rows, quantizeRows } from "../src/quant/ggml.js";
import { kernels, tsKernels } from "../src/quant/kernels.js";
import { loadNative } from "../src/quant/native.js";
import { firstBadRow } from "./golden-manifest.js";
import { xorshift32 } from "./numeric.js";

const native = loadNative();

const rng = xorshift32;

/** Codes: mostly ordinary weights, with runs of zeros, subnormal codes, +-448 and (when asked) NaN codes. */
function codes(rows: number, cols: number, seed: number, nan: boolean): Uint8Array {
  const r = rng(seed);
  const c = new Uint8Array(rows * cols);
  for (let i = 0; i < c.length; i++) {
    const u = r();
    const sign = r() < 0.5 ? 0x80 : 0;
    if (u < 0.02) c[i] = sign; // +-0
    else if (u < 0.04) c[i] = sign | Math.floor(r() * 8); // exponent 0: zero or subnormal
    else if (u < 0.045) c[i] = sign | 0x7e; // 448
    else if (nan && u < 0.046) c[i] = sign | 0x7f; // NaN code
    else c[i] = sign | (0x08 + Math.floor(r() * 0x76)); // normal 0x08..0x7d
  }
  return c;
}

/** Block scales: ordinary, tiny (subnormal products), huge (products overflow to Inf) and zero. */
function scales(rows: number, cols: number, seed: number, nonFinite: boolean): Float32Array {
  const r = rng(seed);
  const kinds = [2e-4, 1.7e-3, 1e-40, 1e36, 0, 1];
  if (nonFinite) kinds.push(Infinity, NaN);
  return new Float32Array(Math.ceil(rows / 128) * Math.ceil(cols / 128)).map((_, i) => (i < kinds.length ? kinds[i]! : kinds[Math.floor(r() * kinds.length)]!) * (0.5 + r()));
}

function twoStep(type: string, src: Uint8Array, rows: number, cols: number, scale: Float32Array, round: boolean, imatrix: Float32Array | null): { bytes: Uint8Array; nan: number } {
  const values = new Float32Array(rows * cols);
  const nan = kernels().fp8ToF32(src, rows, cols, scale, values, 1, round);
  return { bytes: quantizeRows(type, values, rows, cols, imatrix, 1), nan };
}

describe.skipIf(native === null)("quantizeFp8Rows against fp8ToF32 + quantizeRows", () => {
  const levels = native?.hasAvx2() ? (["scalar", "avx2"] as const) : (["scalar"] as const);
  // 300 rows: three 128-row scale blocks, the last partial; 512 columns: four scale blocks.
  const rows = 300, cols = 512;
  const types = ["Q8_0", "Q4_0", "BF16", "F16", "F32", "Q4_K", "Q6_K", "IQ4_XS", "Q5_1"];

  for (const level of levels) {
    it.each(types)(`${level}: %s, same bytes and NaN count (rounded or not, with and without imatrix)`, (name) => {
      expect(native!.setSimd(level)).toBe(true);
      try {
        const t = ggmlQuantType(name);
        const src = codes(rows, cols, 17 + t.id, true);
        const scale = scales(rows, cols, 5 + t.id, true);
        const r = rng(t.id);
        const im = new Float32Array(cols).map(() => (r() < 0.05 ? 0 : Math.exp(3 * r() - 1)));
        for (const round of [true, false]) {
          for (const imatrix of t.imatrix === "ignored" ? [null] : [null, im]) {
            const want = twoStep(name, src, rows, cols, scale, round, imatrix);
            for (const threads of [1, 3]) {
              const out = new Uint8Array(rows * rowBytes(t, cols));
              const nan = quantizeFp8Rows(t, src, rows, cols, scale, { bf16Round: round, imatrix, threads, kernels: kernels() }, out);
              expect(nan).toBe(want.nan);
              if (!Buffer.from(out).equals(want.bytes)) expect.fail(`${name} round=${round} imatrix=${!!imatrix} threads=${threads}: ${firstBadRow(out, want.bytes, rowBytes(t, cols))}`);
            }
          }
        }
      } finally {
        native!.setSimd("auto");
      }
    });
  }

  it("the TypeScript kernels take the two-step path with the same bytes", () => {
    const src = codes(130, 256, 3, false);
    const scale = scales(130, 256, 4, false);
    const a = new Uint8Array(130 * rowBytes("BF16", 256));
    const b = new Uint8Array(a.length);
    expect(quantizeFp8Rows("BF16", src, 130, 256, scale, { bf16Round: true, imatrix: null, threads: 1, kernels: tsKernels }, a)).toBe(0);
    quantizeFp8Rows("BF16", src, 130, 256, scale, { bf16Round: true, imatrix: null, threads: 2, kernels: kernels() }, b);
    expect(Buffer.from(a).equals(b)).toBe(true);
  });

  it("refuses wrong sizes and a missing imatrix with DeepcastError", () => {
    const src = new Uint8Array(128 * 256);
    const scale = new Float32Array(2);
    const opts = { bf16Round: true, imatrix: null, threads: 1, kernels: kernels() };
    expect(() => quantizeFp8Rows("Q8_0", src, 128, 256, new Float32Array(3), opts, new Uint8Array(128 * 272))).toThrow(/scale has 3 values/);
    expect(() => quantizeFp8Rows("Q8_0", src, 128, 256, scale, opts, new Uint8Array(10))).toThrow(/dst has 10 bytes/);
    expect(() => quantizeFp8Rows("Q8_0", src, 128, 256, scale, { ...opts, imatrix: new Float32Array(5) }, new Uint8Array(128 * 272))).toThrow(/imatrix has 5 values/);
    expect(() => quantizeFp8Rows("IQ2_XXS", src, 128, 256, scale, opts, new Uint8Array(128 * rowBytes("IQ2_XXS", 256)))).toThrow(DeepcastError);
    expect(() => quantizeFp8Rows("Q4_K", src, 128, 100, scale, opts, new Uint8Array(1))).toThrow(/multiple of the Q4_K block size/);
  });
});
