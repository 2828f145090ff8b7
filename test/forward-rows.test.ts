/**
 * The forward pass's row-wise steps: the native ones (native/src/forward_rows.cc) give the bytes of
 * their TypeScript twins (ops.ts rowsTs), and the router's top-k selection by insertion picks what a
 * stable descending sort picks (model.py's topk order), ties and masked groups included.
 */
import { describe, expect, it } from "vitest";
import { route } from "../src/model/forward.js";
import type { ModelConfig } from "../src/model/config.js";
import { addInto, forwardOps, gatherRows, mlaKv, rmsNorm, rope, rowsTs, scatterAddScaled, tsOps } from "../src/model/ops.js";
import { loadNative } from "../src/quant/native.js";

const native = loadNative();

function rand(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 31 - 1) * scale;
  });
}
const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const same = (a: Float32Array, b: Float32Array) => bytes(a).equals(bytes(b));

describe.runIf(native !== null)("native row-wise steps = their TypeScript twins, byte for byte", () => {
  it("RMSNorm, strided and in place", () => {
    const [rows, dim, xs, ys] = [37, 144, 160, 150];
    const x = rand(rows * xs, 1, 30);
    const w = rand(dim, 2);
    const a = new Float32Array(rows * ys).fill(7);
    const b = new Float32Array(rows * ys).fill(7);
    rmsNorm(x, rows, dim, w, 1e-6, a, xs, ys);
    rowsTs.rmsNorm(x, rows, dim, w, 1e-6, b, xs, ys);
    expect(same(a, b)).toBe(true);
    expect(a[dim]).toBe(7); // past dim in a strided row: untouched
    const c = x.slice();
    const d = x.slice(0, rows * dim);
    rmsNorm(c.subarray(0, rows * dim), rows, dim, w, 1e-5);
    rowsTs.rmsNorm(d, rows, dim, w, 1e-5, d, dim, dim);
    expect(same(c.subarray(0, rows * dim), d)).toBe(true);
  });

  it("RoPE over heads and positions", () => {
    const [rows, heads, dqk, dn, dr] = [19, 3, 48, 32, 16];
    const x = rand(rows * heads * dqk, 3, 4);
    const pos = Int32Array.from({ length: rows }, (_, i) => (i * 7) % 23);
    const tables = { cos: rand(24 * (dr / 2), 4), sin: rand(24 * (dr / 2), 5) };
    const a = x.slice();
    const b = x.slice();
    rope(a, rows, heads * dqk, dn, heads, dqk, dr, pos, tables);
    rowsTs.rope(b, rows, heads * dqk, dn, heads, dqk, dr, pos, tables.cos, tables.sin);
    expect(same(a, b)).toBe(true);
    expect(same(a, x)).toBe(false);
  });

  it("x += y, MLA's K/V assembly, gather and weighted scatter-add", () => {
    const x = rand(1000, 6);
    const y = rand(1000, 7);
    const a = x.slice();
    const b = x.slice();
    addInto(a, y);
    rowsTs.add(b, y);
    expect(same(a, b)).toBe(true);

    const [N, H, dn, dr, dv, kvr] = [11, 4, 32, 16, 24, 64];
    const kva = rand(N * (kvr + dr), 8);
    const kvb = rand(N * H * (dn + dv), 9);
    const k1 = new Float32Array(N * H * (dn + dr));
    const v1 = new Float32Array(N * H * dv);
    const k2 = k1.slice();
    const v2 = v1.slice();
    mlaKv(kva, kvb, k1, v1, N, H, dn, dr, dv, kvr);
    rowsTs.mlaKv(kva, kvb, k2, v2, N, H, dn, dr, dv, kvr);
    expect(same(k1, k2) && same(v1, v2)).toBe(true);
    expect(k1[(5 * H + 2) * (dn + dr) + dn + 3]).toBe(kva[5 * (kvr + dr) + kvr + 3]);

    const dim = 40;
    const src = rand(20 * dim, 10);
    const idx = Int32Array.of(3, 3, 19, 0, 7);
    const g1 = gatherRows(src, idx, dim);
    const g2 = new Float32Array(idx.length * dim);
    rowsTs.gather(src, idx, dim, g2);
    expect(same(g1, g2)).toBe(true);
    const out = rand(idx.length * dim, 11);
    const scale = rand(idx.length, 12, 3);
    const s1 = rand(20 * dim, 13);
    const s2 = s1.slice();
    scatterAddScaled(s1, out, idx, scale, dim);
    rowsTs.scatterAddScaled(s2, out, idx, scale, dim);
    expect(same(s1, s2)).toBe(true);
  });

  it("refuses sizes past the arrays (no write out of bounds)", () => {
    const x = new Float32Array(10);
    expect(() => rmsNorm(x, 2, 8, new Float32Array(8), 1e-6)).toThrow(/out of range/);
    expect(() => gatherRows(x, Int32Array.of(2), 5)).toThrow(/out of range/);
    expect(() => scatterAddScaled(x, new Float32Array(5), Int32Array.of(-1), new Float32Array(1), 5)).toThrow(/out of range/);
  });
});

describe.runIf(native !== null)("SiLU product (vexp.h's exp)", () => {
  it("gives the same bytes at every SIMD level and thread count, within 4 float32 ulp (5e-7) of float64 math", () => {
    const n = 300_007; // above the threading threshold, with a tail of every lane count
    const g0 = Float32Array.from(rand(n, 21, 40), (v, i) => (i % 1000 === 0 ? [-200, 200, 0, -0, -87.5, 88.5][(i / 1000) % 6]! : v));
    const u = rand(n, 22, 2);
    const levels: ("scalar" | "avx2" | "avx512")[] = ["scalar"];
    if (native!.hasAvx2()) levels.push("avx2");
    if (native!.hasAvx512()) levels.push("avx512");
    let ref: Float32Array | undefined;
    try {
      for (const level of levels) {
        expect(native!.setSimd(level)).toBe(true);
        for (const threads of [1, 3]) {
          const g = g0.slice();
          forwardOps().siluMul(g, u, threads);
          ref ??= g;
          expect(same(g, ref), `${level} ${threads} threads`).toBe(true);
        }
      }
    } finally {
      native!.setSimd("auto");
    }
    const want = g0.slice();
    tsOps.siluMul(want, u, 1);
    let worst = 0;
    for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(ref![i]! - want[i]!) / Math.max(Math.abs(want[i]!), 1e-30));
    expect(worst).toBeLessThan(5e-7);
  });
});

describe.runIf(native !== null)("causal attention", () => {
  // Ragged sequences (one empty, lengths off the 64/16-key vectors, the 4-query groups and 16-query blocks), 3 heads.
  const offsets = Int32Array.of(0, 37, 37, 40, 300);
  const [H, dqk] = [3, 48];
  const N = offsets[offsets.length - 1]!;
  const simdLevels = () => {
    const levels: ("scalar" | "avx2" | "avx512")[] = ["scalar"];
    if (native!.hasAvx2()) levels.push("avx2");
    if (native!.hasAvx512()) levels.push("avx512");
    return levels;
  };

  // dv 32: the vector widths exactly; 45: the 16/8-wide and scalar tails of the weighted sums; 128: MLA's latent.
  it.each([32, 45, 128])("gives the same bytes at every SIMD level and thread count, and stays within 1e-5 of float64 math (dv %i)", (dv) => {
    const q = rand(N * H * dqk, 51, 1.5);
    const k = rand(N * H * dqk, 52, 1.5);
    const v = rand(N * H * dv, 53);
    let ref: Float32Array | undefined;
    try {
      for (const level of simdLevels()) {
        expect(native!.setSimd(level)).toBe(true);
        for (const threads of [1, 2, 3]) {
          const out = new Float32Array(N * H * dv);
          native!.causalAttention(q, k, v, out, offsets, H, dqk, dv, 0.2, threads);
          ref ??= out;
          expect(same(out, ref), `${level} ${threads} threads`).toBe(true);
        }
      }
    } finally {
      native!.setSimd("auto");
    }
    const want = new Float32Array(N * H * dv);
    tsOps.attention(q, k, v, want, offsets, H, dqk, dv, 0.2, 1);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(ref![i]! - want[i]!));
    expect(worst).toBeLessThan(1e-5);
  });

  // imatrix's MLA statistics (forward.ts attendObservingLatent): the latent c [N, C] shared by the heads,
  // attended with each head's weights, must be the bytes of attention over values [v_h, c] built in full.
  it.each([[32, 128], [45, 20]])("with a shared latent (dv %i, C %i): out and cOut are the bytes of attention over [v_h, c], at every SIMD level", (dv, C) => {
    const q = rand(N * H * dqk, 61, 1.5);
    const k = rand(N * H * dqk, 62, 1.5);
    const v = rand(N * H * dv, 63);
    const c = rand(N * C, 64);
    const w = dv + C;
    const vx = new Float32Array(N * H * w);
    for (let t = 0; t < N; t++) {
      for (let h = 0; h < H; h++) {
        vx.set(v.subarray((t * H + h) * dv, (t * H + h + 1) * dv), (t * H + h) * w);
        vx.set(c.subarray(t * C, (t + 1) * C), (t * H + h) * w + dv);
      }
    }
    try {
      for (const level of simdLevels()) {
        expect(native!.setSimd(level)).toBe(true);
        const ox = new Float32Array(N * H * w);
        native!.causalAttention(q, k, vx, ox, offsets, H, dqk, w, 0.2, 1);
        for (const threads of [1, 3]) {
          const out = new Float32Array(N * H * dv);
          const cOut = new Float32Array(N * H * C);
          native!.causalAttention(q, k, v, out, offsets, H, dqk, dv, 0.2, threads, c, cOut);
          for (let r = 0; r < N * H; r++) {
            expect(same(out.subarray(r * dv, (r + 1) * dv), ox.subarray(r * w, r * w + dv)), `${level} ${threads} threads, row ${r} of out`).toBe(true);
            expect(same(cOut.subarray(r * C, (r + 1) * C), ox.subarray(r * w + dv, (r + 1) * w)), `${level} ${threads} threads, row ${r} of cOut`).toBe(true);
          }
        }
      }
    } finally {
      native!.setSimd("auto");
    }
    expect(() => native!.causalAttention(q, k, v, new Float32Array(N * H * dv), offsets, H, dqk, dv, 0.2, 1, c, new Float32Array(N * H * C - 1))).toThrow(/cOut has the wrong size/);
  });
});

/** model.py's Gate with a full stable sort per token (the implementation the insertion replaced). */
function routeBySort(cfg: ModelConfig, logits: Float32Array, N: number, bias: Float32Array | null) {
  const E = cfg.nRoutedExperts, K = cfg.nActivatedExperts, G = cfg.nExpertGroups, per = E / G;
  const order = (arr: Float32Array, n: number) => Array.from({ length: n }, (_, i) => i).sort((i, j) => arr[j]! - arr[i]! || i - j);
  const indices: number[] = [];
  for (let t = 0; t < N; t++) {
    const s = Float32Array.from(logits.subarray(t * E, (t + 1) * E), (v) => 1 / (1 + Math.exp(-v)));
    const b = Float32Array.from(s, (v, e) => (bias ? v + bias[e]! : v));
    const gs = new Float32Array(G);
    for (let g = 0; g < G; g++) {
      const grp = b.subarray(g * per, (g + 1) * per);
      const o = order(grp, per);
      gs[g] = bias ? grp[o[0]!]! + grp[o[1]!]! : Math.max(...grp);
    }
    const go = order(gs, G);
    for (let r = cfg.nLimitedGroups; r < G; r++) b.fill(-Infinity, go[r]! * per, (go[r]! + 1) * per);
    indices.push(...order(b, E).slice(0, K));
  }
  return indices;
}

describe.runIf(native !== null)("statistics over the pass's outputs", () => {
  it("imatrix's in_sum2 accumulation: native bytes = the TypeScript loop's", async () => {
    const { addSquaresTs } = await import("../src/model/imatrix-collect.js");
    const [rows, cols, stride] = [33, 96, 100];
    const x = rand(rows * stride, 41, 50);
    const a = Float64Array.from({ length: 3 * cols }, (_, i) => i * 0.37);
    const b = a.slice();
    native!.addSquares(a, cols, x, rows, cols, stride);
    addSquaresTs(b, cols, x, rows, cols, stride);
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
    expect(a[0]).toBe(0);
    expect(() => native!.addSquares(a, 2 * cols + 1, x, rows, cols, stride)).toThrow(/out of range/);
  });

  it("the native log-softmax facts of a row equal the TypeScript twin's (lse to 1e-15 relative)", async () => {
    const { rowFactsTs } = await import("../src/model/kld-stats.js");
    const vocab = 2048;
    const logits = rand(5 * vocab, 31, 12);
    logits[2 * vocab + 77] = 40; // a clear argmax
    logits[3 * vocab + 5] = logits[3 * vocab + 9] = 30; // a tie: the first wins
    const out = new Float64Array(3);
    for (let r = 0; r < 5; r++) {
      native!.logitRowFacts(logits, r * vocab, vocab, out);
      const t = rowFactsTs(logits, r * vocab, vocab);
      expect(out[0]).toBe(t.max);
      expect(out[1]).toBe(t.argmax);
      expect(Math.abs(out[2]! - t.lse) / Math.abs(t.lse)).toBeLessThan(1e-15);
      if (r === 2) expect(out[1]).toBe(77);
      if (r === 3) expect(out[1]).toBe(5);
    }
  });
});

describe("router top-k", () => {
  it("selects what a stable descending sort selects, with ties and masked groups", () => {
    const cfg = { nRoutedExperts: 32, nActivatedExperts: 8, nExpertGroups: 4, nLimitedGroups: 1, scoreFunc: "sigmoid", normTopkProb: true, routeScale: 2.5 } as ModelConfig;
    const N = 200;
    // Few distinct values: many exact ties within and across groups; only one group of 8 kept for top-8
    // plus the next (masked, -Infinity) expert for the margin.
    const logits = Float32Array.from(rand(N * 32, 14), (v) => Math.round(v * 3) / 3);
    const bias = Float32Array.from({ length: 32 }, (_, e) => (e % 5) * 0.125);
    for (const bs of [bias, null]) {
      const r = route(cfg, logits, N, bs);
      expect(Array.from(r.indices)).toEqual(routeBySort(cfg, logits, N, bs));
    }
    const cfg2 = { ...cfg, nLimitedGroups: 2, nActivatedExperts: 6 };
    expect(Array.from(route(cfg2, logits, N, bias).indices)).toEqual(routeBySort(cfg2, logits, N, bias));
  });
});
