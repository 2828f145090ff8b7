import { describe, expect, it } from "vitest";
import { ggmlType } from "../src/formats/ggml-types.js";
import { dequantizeRows, quantizeRows } from "../src/quant/ggml.js";
import {
  candidateTypes,
  gaussianNsr,
  gaussianRows,
  parseTargetSize,
  readsPerToken,
  rowErrorSums,
  solveTargetMix,
  tensorDamage,
  type TargetTensor,
} from "../src/quant/target-mix.js";

const TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"].map((n) => ggmlType(n));

/** xorshift PRNG in [0, 1). */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
}

/** Random instance: n tensors, k candidates each with random bytes and damages (not convex, not monotone). */
function instance(seed: number, n: number, k: number): TargetTensor[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => ({
    name: `t${i}`,
    candidates: Array.from({ length: k }, (_, j) => ({ type: TYPES[j]!, bytes: 1 + Math.floor(r() * 100), damage: Math.round(r() * 1000) / 10 })),
  }));
}

/** Every assignment: the least damage within the budget, or null. */
function bruteForce(ts: TargetTensor[], budget: number): number | null {
  let best: number | null = null;
  const rec = (i: number, bytes: number, damage: number) => {
    if (bytes > budget) return;
    if (i === ts.length) {
      if (best === null || damage < best) best = damage;
      return;
    }
    for (const c of ts[i]!.candidates) rec(i + 1, bytes + c.bytes, damage + c.damage);
  };
  rec(0, 0, 0);
  return best;
}

describe("solveTargetMix", () => {
  it("agrees with brute force over all assignments on small random instances, at every budget", () => {
    for (let seed = 1; seed <= 40; seed++) {
      const ts = instance(seed, 4, 4);
      const min = ts.reduce((a, t) => a + Math.min(...t.candidates.map((c) => c.bytes)), 0);
      const max = ts.reduce((a, t) => a + Math.max(...t.candidates.map((c) => c.bytes)), 0);
      for (let budget = min; budget <= max; budget += 3) {
        const s = solveTargetMix(ts, budget);
        expect(s.method).toBe("exact");
        expect(s.bytes).toBeLessThanOrEqual(budget);
        expect(s.damage).toBeCloseTo(bruteForce(ts, budget)!, 9);
        // the choices are real candidates and add up
        expect(s.bytes).toBe(s.choices.reduce((a, c) => a + c.bytes, 0));
      }
    }
  });

  it("the Lagrangian hull walk is optimal at its own byte count when no step was skipped, and within one tensor's damage range otherwise", () => {
    let exactHits = 0;
    for (let seed = 100; seed < 140; seed++) {
      const ts = instance(seed, 5, 4);
      const min = ts.reduce((a, t) => a + Math.min(...t.candidates.map((c) => c.bytes)), 0);
      const max = ts.reduce((a, t) => a + Math.max(...t.candidates.map((c) => c.bytes)), 0);
      const spread = Math.max(...ts.map((t) => Math.max(...t.candidates.map((c) => c.damage)) - Math.min(...t.candidates.map((c) => c.damage))));
      for (let budget = min; budget <= max; budget += 7) {
        const g = solveTargetMix(ts, budget, { method: "lagrangian" });
        const opt = bruteForce(ts, budget)!;
        expect(g.bytes).toBeLessThanOrEqual(budget);
        expect(g.damage).toBeGreaterThanOrEqual(opt - 1e-9);
        expect(g.damage - opt).toBeLessThanOrEqual(spread);
        // optimal for the bytes it uses whenever it is optimal for any budget it reaches exactly
        if (Math.abs(g.damage - bruteForce(ts, g.bytes)!) < 1e-9) exactHits++;
      }
    }
    expect(exactHits).toBeGreaterThan(0);
  });

  it("hull points: a known optimum on a convex synthetic case", () => {
    // A: damage 8, 4, 2; B: 8, 2, 0.5 for 10, 20, 30 bytes. Gains per step: B 6, A 4, A 2, B 1.5.
    const A = { name: "A", candidates: [0, 1, 2].map((j) => ({ type: TYPES[j]!, bytes: 10 + 10 * j, damage: 8 / 2 ** j })) };
    const B = { name: "B", candidates: [0, 1, 2].map((j) => ({ type: TYPES[j]!, bytes: 10 + 10 * j, damage: 8 / 4 ** j })) };
    for (const method of ["exact", "lagrangian"] as const) {
      expect(solveTargetMix([A, B], 20, { method }).choices.map((c) => c.type.name)).toEqual(["Q2_K", "Q2_K"]);
      expect(solveTargetMix([A, B], 30, { method }).choices.map((c) => c.type.name)).toEqual(["Q2_K", "Q3_K"]);
      expect(solveTargetMix([A, B], 40, { method }).choices.map((c) => c.type.name)).toEqual(["Q3_K", "Q3_K"]);
      expect(solveTargetMix([A, B], 50, { method }).choices.map((c) => c.type.name)).toEqual(["Q4_K", "Q3_K"]);
      expect(solveTargetMix([A, B], 59, { method }).choices.map((c) => c.type.name)).toEqual(["Q4_K", "Q3_K"]);
      expect(solveTargetMix([A, B], 60, { method }).damage).toBe(2.5);
    }
  });

  it("refuses a budget below the smallest plan, naming the sizes", () => {
    const ts = instance(7, 3, 3);
    expect(() => solveTargetMix(ts, 2)).toThrow(/target is too small/);
  });

  it("scales to a thousand tensors in well under a second (Lagrangian)", () => {
    const ts = instance(9, 1200, 8);
    // bytes of every tensor's least-damage candidate: more never helps
    const max = ts.reduce((a, t) => a + [...t.candidates].sort((x, y) => x.damage - y.damage || x.bytes - y.bytes)[0]!.bytes, 0);
    const t0 = performance.now();
    const s = solveTargetMix(ts, Math.floor(max * 0.6), { method: "lagrangian" });
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(s.bytes).toBeLessThanOrEqual(Math.floor(max * 0.6));
    expect(s.bytes).toBeGreaterThan(Math.floor(max * 0.6) - 100);
  });
});

describe("candidates and damage", () => {
  it("candidates come from the type table's quantizers, through ggml's shape fallback, IQ only with imatrix data", () => {
    const names = (ne: number[], hasImatrix: boolean) => candidateTypes(ne, { hasImatrix }).map((t) => t.name).sort();
    const full = names([7168, 16], false);
    expect(full).toContain("Q2_K");
    expect(full).toContain("Q8_0");
    expect(full).toContain("BF16");
    expect(full).not.toContain("F32");
    expect(full.some((n) => n.startsWith("IQ"))).toBe(false);
    // a row of 512 + 64 = 576 values is not a multiple of 256: K-quants fall back as llama-quantize does
    const odd = names([576, 16], false);
    expect(odd).not.toContain("Q2_K");
    expect(odd).toContain("Q4_0"); // Q2_K/Q3_K's fallback
    expect(odd).toContain("Q5_1"); // Q5_K's fallback
    // with a fake table where an IQ type has a quantizer, it is offered only with imatrix data
    const iq = { ...ggmlType("IQ2_XXS"), quantizer: true };
    expect(candidateTypes([7168, 4], { hasImatrix: false, types: [iq] })).toEqual([]);
    expect(candidateTypes([7168, 4], { hasImatrix: true, types: [iq] }).map((t) => t.name)).toEqual(["IQ2_XXS"]);
  });

  it("the gaussian stand-in falls with the bits: about 4x less error per extra bit", () => {
    const nsr = TYPES.map((t) => gaussianNsr(t));
    for (let i = 1; i < nsr.length; i++) expect(nsr[i]!).toBeLessThan(nsr[i - 1]!);
    // Q4_K (4.5 bpw) vs Q6_K (6.5625 bpw): ~2^(-2*2.06) = 1/17, within a factor 3
    const ratio = gaussianNsr(ggmlType("Q4_K")) / gaussianNsr(ggmlType("Q6_K"));
    expect(ratio).toBeGreaterThan(17 / 3);
    expect(ratio).toBeLessThan(17 * 3);
  });

  it("imatrix-weighted error: zero weight on a column removes its error; routed experts count topK reads", () => {
    const v = gaussianRows(4 * 256, 3);
    const q4 = ggmlType("Q4_K");
    const flat = rowErrorSums(q4, v, 4, 256, null);
    expect(flat.err).toBeGreaterThan(0);
    // the sums are those of the values quantized with the weights and dequantized again
    const w = new Float32Array(256).fill(1);
    w.fill(0, 128);
    const q = dequantizeRows(q4, quantizeRows(q4, v, 4, 256, w), 4, 256);
    let err = 0;
    let signal = 0;
    for (let r = 0; r < 4; r++) for (let j = 0; j < 128; j++) {
      err += (v[r * 256 + j]! - q[r * 256 + j]!) ** 2;
      signal += v[r * 256 + j]! ** 2;
    }
    const half = rowErrorSums(q4, v, 4, 256, w);
    expect(half.err).toBeCloseTo(err, 9);
    expect(half.signal).toBeCloseTo(signal, 6);
    expect(readsPerToken("blk.3.ffn_down_exps.weight", { nExpert: 256, topK: 8 })).toBe(8);
    expect(readsPerToken("blk.3.ffn_down_shexp.weight", { nExpert: 256, topK: 8 })).toBe(1);
    expect(readsPerToken("output.weight", { nExpert: 256, topK: 8, nLayer: 61 })).toBe(61);
    expect(tensorDamage(q4, { err: 1, signal: 100 }, 8)).toEqual({ damage: 0.08, analytic: false });
    expect(tensorDamage(q4, { err: 0, signal: 0 }, 1)).toEqual({ damage: gaussianNsr(q4), analytic: true });
  });

  it("parses target sizes in powers of 1000", () => {
    expect(parseTargetSize("180G")).toBe(180e9);
    expect(parseTargetSize("1.5T")).toBe(1.5e12);
    expect(parseTargetSize("500M")).toBe(500e6);
    expect(parseTargetSize("12345")).toBe(12345);
    expect(() => parseTargetSize("180GiB")).toThrow(/invalid --target-size/);
    expect(() => parseTargetSize("0")).toThrow(/positive/);
  });
});
