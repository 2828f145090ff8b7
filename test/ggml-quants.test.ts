/**
 * ggml quantizers against ggml's own bytes: fixtures/ggml-quants holds, for 28 inputs, what
 * ggml_quantize_chunk of llama.cpp v0.4.0 (x86-64 GCC build) writes without and with an imatrix,
 * and what its to_float returns for those bytes (see fixtures/ggml-quants/README.md).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it, vi } from "vitest";

import { DeepcastError } from "../src/errors.js";
import { ggmlQuantType, ggmlQuantTypes, rowBytes } from "../src/formats/ggml-types.js";
import { dequantizeRows, ggmlRequiresImatrix, quantizeRows } from "../src/quant/ggml.js";
import { loadNative } from "../src/quant/native.js";
import { lacking, ROOT, sha256 } from "./helpers.js";
import { asBytes, firstBadRow, floatsOf, type GoldenCase as Case, type GoldenManifest as Manifest } from "./golden-manifest.js";
import { xorshift32 } from "./numeric.js";

const DIR = join(ROOT, "fixtures", "ggml-quants");

const manifest = JSON.parse(readFileSync(join(DIR, "manifest.json"), "utf8")) as Manifest;
const native = loadNative();
const hasKernels = native !== null && typeof native["ggmlQuantize"] === "function";
const noKernels = lacking(hasKernels, "the native addon did not load (build/Release/deepcast_native.node), so ggml's quantizers cannot be compared with the golden bytes");

const fileCache = new Map<string, Buffer>();
function bytes(rel: string): Buffer {
  let b = fileCache.get(rel);
  if (!b) {
    b = readFileSync(join(DIR, rel));
    fileCache.set(rel, b);
  }
  return b;
}
function floats(rel: string): Float32Array {
  const b = bytes(rel);
  return floatsOf(b);
}


describe("golden fixture", () => {
  it("is intact (sha256 of every file) and has 588 cases", () => {
    expect(manifest.cases).toHaveLength(588);
    for (const c of manifest.cases) {
      for (const k of ["input", "imatrix", "expected", "dequant"] as const) {
        const f = c.files[k];
        if (f) expect(sha256(bytes(f)), f).toBe(c.sha256[k]);
      }
    }
  });

  it("agrees with formats/ggml-types.json and the addon's row sizes", () => {
    for (const [folder, t] of Object.entries(manifest.types)) {
      const mine = ggmlQuantType(folder);
      expect(mine.ggmlName).toBe(t.name);
      expect([mine.id, mine.blockSize, mine.typeSize]).toEqual([t.id, t.block_size, t.type_size]);
      expect(mine.imatrix !== "ignored").toBe(!manifest.imatrix_ignored_by.includes(folder));
    }
    for (const t of ggmlQuantTypes()) {
      expect(ggmlQuantType(t.name.toLowerCase())).toBe(t);
      expect(ggmlQuantType(t.id)).toBe(t);
      expect(t.kQuant).toBe(/^Q\d_K$/.test(t.name));
      if (hasKernels) expect((native!["ggmlRowBytes"] as (t: number, n: number) => number)(t.id, 512)).toBe(rowBytes(t, 512));
    }
  });
});

const byType = new Map<string, Case[]>();
for (const c of manifest.cases) byType.set(c.type_upper, [...(byType.get(c.type_upper) ?? []), c]);

describe.skipIf(noKernels).each([...byType.keys()])("%s", (typeName) => {
  const cases = byType.get(typeName)!;
  for (const mode of ["plain", "imatrix"] as const) {
    const modeCases = cases.filter((c) => c.imatrix === (mode === "imatrix"));
    if (modeCases.length === 0) continue;

    it(`quantizes ${modeCases.length} ${mode} cases byte for byte`, () => {
      for (const c of modeCases) {
        const x = floats(c.files.input);
        const im = c.files.imatrix ? floats(c.files.imatrix) : null;
        const got = quantizeRows(typeName, x, c.rows, c.n_per_row, im, 1);
        const want = bytes(c.files.expected);
        expect(got.length, c.id).toBe(c.rows * c.row_bytes);
        if (!Buffer.from(got).equals(want)) expect.fail(`${c.id}: ${firstBadRow(got, want, c.row_bytes)}`);
      }
    });

    it(`dequantizes the ${mode} bytes bit for bit`, () => {
      for (const c of modeCases) {
        const got = dequantizeRows(typeName, bytes(c.files.expected), c.rows, c.n_per_row, 1);
        const want = bytes(c.files.dequant);
        if (!asBytes(got).equals(want)) {
          const g = new Uint32Array(got.buffer), w = new Uint32Array(want.buffer.slice(want.byteOffset, want.byteOffset + want.byteLength));
          const i = g.findIndex((v, k) => v !== w[k]);
          expect.fail(`${c.id}: value ${i}: got 0x${g[i]!.toString(16)}, want 0x${w[i]!.toString(16)}`);
        }
      }
    });
  }
});

describe.skipIf(noKernels)("threads", () => {
  // All 512-wide inputs stacked: ~190 rows, enough for every thread to get several rows.
  const inputs = manifest.inputs.filter((i) => i.n_per_row === 512);
  const rows = inputs.reduce((s, i) => s + i.rows, 0);
  const x = new Float32Array(rows * 512);
  let off = 0;
  for (const i of inputs) {
    x.set(floats(i.file), off);
    off += i.rows * 512;
  }
  const im = floats(inputs[0]!.imatrix_file);

  it.each(ggmlQuantTypes().map((t) => t.name))("%s: 1, 3 and 8 threads give the same bytes and values", (name) => {
    const t = ggmlQuantType(name);
    for (const imatrix of t.imatrix === "ignored" ? [null] : ggmlRequiresImatrix(t) ? [im] : [null, im]) {
      const one = quantizeRows(t, x, rows, 512, imatrix, 1);
      for (const threads of [3, 8]) expect(Buffer.from(quantizeRows(t, x, rows, 512, imatrix, threads)).equals(one)).toBe(true);
      const d1 = dequantizeRows(t, one, rows, 512, 1);
      expect(asBytes(dequantizeRows(t, one, rows, 512, 8)).equals(asBytes(d1))).toBe(true);
    }
  });

  it("matches the golden bytes when each fixture row is quantized on its own", () => {
    const c = manifest.cases.find((k) => k.id === "q4_K/real-512/imatrix")!;
    const xs = floats(c.files.input);
    const im1 = floats(c.files.imatrix!);
    const want = bytes(c.files.expected);
    for (let r = 0; r < c.rows; r++) {
      const row = quantizeRows("Q4_K", xs.subarray(r * 512, (r + 1) * 512), 1, 512, im1);
      expect(Buffer.from(row).equals(want.subarray(r * c.row_bytes, (r + 1) * c.row_bytes))).toBe(true);
    }
  });
});

// The AVX2 path runs 8 or 16 groups (sub-blocks, or blocks for the legacy imatrix paths) in vector
// lanes, each lane repeating the scalar operations of its group. Both levels must give ggml's bytes.
const canCompareSimd = hasKernels && native!.hasAvx2();

const rng = xorshift32;

/** Rows whose 16-value segments come from different families, so one vector mixes lane kinds. */
function mixedRows(rows: number, n: number, seed: number): Float32Array {
  const r = rng(seed);
  const gauss = () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  const x = new Float32Array(rows * n);
  for (let seg = 0; seg < x.length; seg += 16) {
    const kind = Math.floor(r() * 12);
    const scale = 10 ** (r() * 12 - 8);
    const c = (r() < 0.5 ? -1 : 1) * scale;
    for (let i = seg; i < seg + 16; i++) {
      switch (kind) {
        case 0: x[i] = 0; break;
        case 1: x[i] = c; break; // constant
        case 2: x[i] = i === seg + Math.floor(r() * 16) ? c : 0; break; // at most one spike
        case 3: x[i] = scale * r(); break; // all positive
        case 4: x[i] = -scale * r(); break; // all negative
        case 5: x[i] = Math.round(gauss() * 8) / 16; break; // grid values, rounding ties
        case 6: x[i] = gauss() * 1e-40; break; // subnormal
        case 7: x[i] = gauss() * 3e4; break; // large (fp16 overflow in d/m)
        case 8: x[i] = Math.floor(r() * 16); break; // exact 4-bit integers
        default: x[i] = gauss() * scale;
      }
    }
  }
  return x;
}

describe.skipIf(!canCompareSimd)(`scalar and AVX2${canCompareSimd ? "" : " [skipped: no addon or no AVX2 on this CPU]"}`, () => {
  const setSimd = (level: "scalar" | "avx2" | "auto") => expect(native!.setSimd(level)).toBe(true);

  it("the scalar level reproduces every golden case too", () => {
    setSimd("scalar");
    try {
      for (const c of manifest.cases) {
        const im = c.files.imatrix ? floats(c.files.imatrix) : null;
        const got = quantizeRows(c.type, floats(c.files.input), c.rows, c.n_per_row, im);
        if (!Buffer.from(got).equals(bytes(c.files.expected))) expect.fail(`${c.id} (scalar): ${firstBadRow(got, bytes(c.files.expected), c.row_bytes)}`);
      }
    } finally {
      setSimd("auto");
    }
  });

  it.each(ggmlQuantTypes().filter((t) => t.blockSize > 1).map((t) => t.name))("%s: identical bytes on mixed random rows", (name) => {
    const t = ggmlQuantType(name);
    // 7 super-blocks (K-quants) / 55 blocks (legacy): full 16-lane batches, an 8-lane one and a
    // scalar tail all occur within a row.
    const rows = 128, n = t.blockSize === 256 ? 7 * 256 : 55 * 32;
    const x = mixedRows(rows, n, 0x9e3779b9 ^ t.id);
    const r = rng(7 + t.id);
    const im = new Float32Array(n).map(() => (r() < 0.05 ? 0 : Math.exp(3 * r() - 1)));
    for (const imatrix of t.imatrix === "ignored" ? [null] : ggmlRequiresImatrix(t) ? [im] : [null, im]) {
      setSimd("scalar");
      const scalar = quantizeRows(t, x, rows, n, imatrix, 2);
      setSimd("avx2");
      const avx2 = quantizeRows(t, x, rows, n, imatrix, 2);
      setSimd("auto");
      if (!Buffer.from(avx2).equals(scalar)) expect.fail(`${name}${imatrix ? " imatrix" : ""}: ${firstBadRow(avx2, scalar, rowBytes(t, n))}`);
    }
  });
});

describe("API", () => {
  it("F32 round-trips exactly", () => {
    const x = floats("inputs/large-512.f32");
    const q = quantizeRows("F32", x, 15, 512);
    expect(Buffer.from(q).equals(asBytes(x))).toBe(true);
    expect(asBytes(dequantizeRows("f32", q, 15, 512)).equals(asBytes(x))).toBe(true);
  });

  it("rejects bad shapes and unknown types with DeepcastError", () => {
    const x = new Float32Array(512);
    expect(() => ggmlQuantType("Q8_K")).toThrow(DeepcastError);
    expect(() => rowBytes("Q4_K", 300)).toThrow(/multiple of the Q4_K block size 256/);
    expect(() => quantizeRows("Q8_0", x, 3, 256)).toThrow(/src has 512 values, expected 3 x 256/);
    expect(() => quantizeRows("Q4_0", x, 1, 512, new Float32Array(256))).toThrow(/imatrix has 256 values/);
    expect(() => dequantizeRows("Q4_0", new Uint8Array(10), 1, 512)).toThrow(DeepcastError);
  });

  it.skipIf(noKernels)("checks sizes in the addon too", () => {
    const q = native!["ggmlQuantize"] as (...a: unknown[]) => unknown;
    expect(() => q(12, new Float32Array(512), 1, 512, new Uint8Array(10), null, 1)).toThrow(/dst has 10 bytes, expected 288/);
    expect(() => q(12, new Float32Array(512), 1, 500, new Uint8Array(288), null, 1)).toThrow(/multiple of 256/);
    expect(() => q(15, new Float32Array(512), 1, 512, new Uint8Array(288), null, 1)).toThrow(/not supported/);
  });

  it("without the addon: F16/BF16/F32 still match ggml, block types throw a clear error", async () => {
    vi.resetModules();
    const saved = process.env.DEEPCAST_NATIVE;
    process.env.DEEPCAST_NATIVE = "0";
    try {
      const m = await import("../src/quant/ggml.js");
      for (const c of manifest.cases.filter((k) => k.type === "f16" || k.type === "bf16")) {
        const got = m.quantizeRows(c.type, floats(c.files.input), c.rows, c.n_per_row, null, 2);
        expect(Buffer.from(got).equals(bytes(c.files.expected)), c.id).toBe(true);
        const back = m.dequantizeRows(c.type, bytes(c.files.expected), c.rows, c.n_per_row);
        expect(asBytes(back).equals(bytes(c.files.dequant)), c.id).toBe(true);
      }
      expect(() => m.quantizeRows("Q4_K", new Float32Array(256), 1, 256)).toThrow(/needs the native addon/);
      expect(() => m.dequantizeRows("Q8_0", new Uint8Array(34), 1, 32)).toThrow(/needs the native addon/);
    } finally {
      if (saved === undefined) delete process.env.DEEPCAST_NATIVE;
      else process.env.DEEPCAST_NATIVE = saved;
      vi.resetModules();
    }
  });
});
