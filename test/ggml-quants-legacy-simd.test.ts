/**
 * The AVX2 rows of Q8_0 and Q4_0 (native/src/ggml_legacy_avx2.cc) and the F16/BF16 rows against the
 * scalar code, on blocks built to hit every special case: roundf ties at .5 (half away from zero,
 * never nearest-even), NaN and Inf anywhere in a block, zeros of both signs, subnormals, 1/d
 * overflowing, FLT_MAX, magnitudes tied between signs (Q4_0 keeps the first), d at F16 rounding
 * boundaries. The scalar rows are the ones the golden tests (ggml-quants.test.ts) hold to ggml's bytes.
 */
import { describe, expect, it } from "vitest";

import { ggmlQuantType, rowBytes } from "../src/formats/ggml-types.js";
import { quantizeRows } from "../src/quant/ggml.js";
import { loadNative } from "../src/quant/native.js";
import { firstBadRow } from "./golden-manifest.js";
import { xorshift32 } from "./numeric.js";

const native = loadNative();
const canCompare = native !== null && native.hasAvx2();

const rng = xorshift32;

const FLT_MAX = 3.4028234663852886e38;

/** Block kinds, each a function filling 32 values. */
function blockKinds(r: () => number): ((b: Float32Array) => void)[] {
  const gauss = () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  const pos = () => Math.floor(r() * 32);
  return [
    (b) => b.forEach((_, i) => (b[i] = gauss())),
    // Q8_0 ties: amax 127 makes d = 1, so every x*id is exactly k + 0.5.
    (b) => { b.forEach((_, i) => (b[i] = Math.floor(r() * 254) - 127 + 0.5)); b[pos()] = r() < 0.5 ? 127 : -127; },
    // Q4_0 ties: max -8 makes d = 1, x*id + 8.5 lands on integers.
    (b) => { b.forEach((_, i) => (b[i] = (Math.floor(r() * 32) - 16) / 2)); b[pos()] = -8; },
    // the same ties scaled by a power of two (exact)
    (b) => { b.forEach((_, i) => (b[i] = ((Math.floor(r() * 254) - 127 + 0.5) * 2 ** -20))); b[pos()] = 127 * 2 ** -20; },
    (b) => { b.forEach((_, i) => (b[i] = gauss())); b[pos()] = NaN; },
    (b) => { b.forEach((_, i) => (b[i] = gauss())); b[0] = NaN; b[31] = NaN; },
    (b) => { b.forEach((_, i) => (b[i] = gauss())); b[pos()] = r() < 0.5 ? Infinity : -Infinity; },
    (b) => { b.forEach((_, i) => (b[i] = gauss())); b[pos()] = Infinity; b[pos()] = NaN; },
    (b) => b.fill(0),
    (b) => b.fill(-0),
    (b) => b.forEach((_, i) => (b[i] = r() < 0.5 ? 0 : -0)),
    (b) => { b.fill(-0); b[pos()] = 1e-45; },
    // subnormals: 1/d overflows for the smallest blocks, d itself is subnormal or flushes to 0 in F16
    (b) => { const s = 10 ** (-45 + r() * 9); b.forEach((_, i) => (b[i] = gauss() * s)); },
    (b) => { const s = 2 ** -(120 + Math.floor(r() * 12)); b.forEach((_, i) => (b[i] = gauss() * s)); },
    (b) => { b.forEach((_, i) => (b[i] = gauss() * FLT_MAX / 4)); b[pos()] = r() < 0.5 ? FLT_MAX : -FLT_MAX; },
    // d beyond F16's range (amax/127 > 65504)
    (b) => b.forEach((_, i) => (b[i] = gauss() * 1e7)),
    // magnitude ties of both signs: Q4_0 takes the first
    (b) => { b.forEach((_, i) => (b[i] = gauss())); b[3] = -5; b[17] = 5; },
    (b) => { b.forEach((_, i) => (b[i] = gauss())); b[3] = 5; b[17] = -5; },
    (b) => { b.fill(2); b[9] = -2; },
    // d near F16 halfway points: amax = 127 * (1 + (2k+1)/2^11) * 2^e
    (b) => { const e = Math.floor(r() * 40) - 20; const k = Math.floor(r() * 1024); b.forEach((_, i) => (b[i] = gauss() * 2 ** e)); b[pos()] = 127 * (1 + (2 * k + 1) / 2048) * 2 ** e; },
    // exact small integers and constants
    (b) => b.forEach((_, i) => (b[i] = Math.floor(r() * 16) - 8)),
    (b) => b.fill(r() < 0.5 ? 3.25 : -3.25),
  ];
}

/** `rows` rows of `blocks` blocks, every kind present, kinds mixed inside each group of 8 blocks. */
function adversarialRows(rows: number, blocks: number, seed: number): Float32Array {
  const r = rng(seed);
  const kinds = blockKinds(r);
  const x = new Float32Array(rows * blocks * 32);
  for (let b = 0; b < rows * blocks; b++) {
    const kind = b < kinds.length ? b : Math.floor(r() * kinds.length);
    kinds[kind]!(x.subarray(b * 32, b * 32 + 32));
  }
  return x;
}

function atLevel(level: "scalar" | "avx2", f: () => Uint8Array): Uint8Array {
  expect(native!.setSimd(level)).toBe(true);
  try {
    return f();
  } finally {
    native!.setSimd("auto");
  }
}

describe.skipIf(!canCompare)(`Q8_0 / Q4_0 / F16 / BF16 rows, AVX2 against scalar${canCompare ? "" : " [skipped: no addon or no AVX2]"}`, () => {
  // 37 blocks: four groups of 8 for the vector path, then a scalar tail of 5.
  const rows = 64, blocks = 37, n = blocks * 32;
  const x = adversarialRows(rows, blocks, 0x51ed270b);

  it.each(["Q8_0", "Q4_0", "F16", "BF16"])("%s: identical bytes on adversarial blocks (1 and 3 threads)", (name) => {
    const t = ggmlQuantType(name);
    const scalar = atLevel("scalar", () => quantizeRows(t, x, rows, n, null, 1));
    for (const threads of [1, 3]) {
      const avx2 = atLevel("avx2", () => quantizeRows(t, x, rows, n, null, threads));
      if (!Buffer.from(avx2).equals(scalar)) expect.fail(`${name}: ${firstBadRow(avx2, scalar, rowBytes(t, n))}`);
    }
  });

  it("F16 and BF16 rows written at an odd byte offset are the same bytes", () => {
    for (const name of ["F16", "BF16"]) {
      const t = ggmlQuantType(name);
      const want = quantizeRows(t, x, rows, n, null, 1);
      const buf = new Uint8Array(want.length + 1);
      const got = atLevel("avx2", () => quantizeRows(t, x, rows, n, null, 2, buf.subarray(1)));
      expect(Buffer.from(got).equals(want), name).toBe(true);
    }
  });
});

describe.skipIf(native === null)("roundf and the first maximum, as ggml's _ref rows write them (both levels)", () => {
  const levels = native?.hasAvx2() ? (["scalar", "avx2"] as const) : (["scalar"] as const);

  it.each(levels)("%s: Q8_0 rounds ties half away from zero", (level) => {
    // 8 blocks (one vector group), each with amax 127 so that d = 1 and x*id = x.
    const x = new Float32Array(256);
    const ties = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 3.5, -3.5, 0.49999997, -0.49999997, 4.5, -4.5];
    for (let b = 0; b < 8; b++) {
      x[b * 32] = 127;
      ties.forEach((v, i) => (x[b * 32 + 1 + i] = v));
    }
    const q = atLevel(level, () => quantizeRows("Q8_0", x, 1, 256));
    const want = [127, 1, -1, 2, -2, 3, -3, 127, -127, 4, -4, 0, 0, 5, -5];
    for (let b = 0; b < 8; b++) {
      expect(q[b * 34]! | (q[b * 34 + 1]! << 8)).toBe(0x3c00); // d = 1.0 in F16
      expect([...new Int8Array(q.buffer, b * 34 + 2, want.length)]).toEqual(want);
    }
  });

  it.each(levels)("%s: Q4_0 keeps the first of two equal magnitudes, and d = -0 for an all-zero block", (level) => {
    const x = new Float32Array(256).fill(0.25);
    x[5] = -4; x[20] = 4; // block 0: the first (-4) wins, so d = 0.5
    x[32 + 5] = 4; x[32 + 20] = -4; // block 1: d = -0.5
    x.fill(-0, 64, 96); // block 2: all -0, max stays +0 so d = -0
    const q = atLevel(level, () => quantizeRows("Q4_0", x, 1, 256));
    const d = (b: number) => q[b * 18]! | (q[b * 18 + 1]! << 8);
    expect([d(0), d(1), d(2)]).toEqual([0x3800, 0xb800, 0x8000]);
    // block 0: -4 * (1/0.5) + 8.5 -> 0 (low nibble of byte 5); 4 -> MIN(15, 16) = 15 (high nibble of byte 4)
    expect(q[2 + 5]! & 0x0f).toBe(0);
    expect(q[2 + 4]! >> 4).toBe(15);
  });
});
