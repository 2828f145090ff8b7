import { describe, expect, it } from "vitest";
import { ggmlType, type GgmlType } from "../src/formats/ggml-types.js";
import { calibrateProblem, calibratedTargetMix, fitPower, probeLevels, tensorGroup, type GroupFit } from "../src/quant/target-calibrate.js";
import { bitsPerWeight, solveTargetMix, type TargetTensor } from "../src/quant/target-mix.js";

const TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"].map((n) => ggmlType(n));
const BF16 = ggmlType("BF16");

/** A tensor of `weights` values whose estimate is c x 2^(-2 bpw) per type (what quantization noise does). */
function tensor(name: string, weights: number, c: number): TargetTensor {
  return { name, candidates: TYPES.map((type) => ({ type, bytes: (weights * bitsPerWeight(type)) / 8, damage: c * 2 ** (-2 * bitsPerWeight(type)) })) };
}

/** The hidden truth: KLD = floor + sum over groups of a_g (sum of the group's estimates)^b_g; BF16 adds nothing. */
function truth(problem: TargetTensor[], groups: Record<string, { a: number; b: number }>, floor: number) {
  const byName = new Map(problem.map((t) => [t.name, t]));
  return (types: ReadonlyMap<string, GgmlType>) => {
    const sums = new Map<string, number>();
    for (const [name, type] of types) {
      if (type.id === BF16.id) continue;
      const d = byName.get(name)!.candidates.find((c) => c.type.id === type.id)!.damage;
      sums.set(tensorGroup(name), (sums.get(tensorGroup(name)) ?? 0) + d);
    }
    let k = floor;
    for (const [g, s] of sums) k += groups[g]!.a * s ** groups[g]!.b;
    return k;
  };
}

/** Every assignment: the least true KLD within the budget. */
function bruteForce(problem: TargetTensor[], budget: number, f: (types: ReadonlyMap<string, GgmlType>) => number): number {
  let best = Infinity;
  const rec = (i: number, bytes: number, types: Map<string, GgmlType>) => {
    if (bytes > budget) return;
    if (i === problem.length) {
      best = Math.min(best, f(types));
      return;
    }
    for (const c of problem[i]!.candidates) {
      types.set(problem[i]!.name, c.type);
      rec(i + 1, bytes + c.bytes, types);
    }
    types.delete(problem[i]!.name);
  };
  rec(0, 0, new Map());
  return best;
}

describe("fitPower", () => {
  it("recovers a and b of a power law from two points", () => {
    const f = fitPower([{ damage: 0.5, kld: 3 * 0.5 ** 0.7 }, { damage: 0.05, kld: 3 * 0.05 ** 0.7 }])!;
    expect(f.a).toBeCloseTo(3, 10);
    expect(f.b).toBeCloseTo(0.7, 10);
  });
  it("clamps the exponent, falls back to a ratio with one usable point, and gives null with none", () => {
    expect(fitPower([{ damage: 1, kld: 1 }, { damage: 0.1, kld: 1e-6 }])!.b).toBe(1.5);
    const one = fitPower([{ damage: 0.2, kld: 0.01 }, { damage: 0.1, kld: -1e-5 }])!;
    expect(one.a).toBeCloseTo(0.05, 12);
    expect(one.b).toBe(1);
    expect(fitPower([{ damage: 0.2, kld: 0 }])).toBeNull();
  });
});

describe("probeLevels", () => {
  it("brackets the mean bits per weight with the standard levels", () => {
    expect(probeLevels(2)).toEqual([2.625, 3.4375]);
    expect(probeLevels(2.9)).toEqual([2.625, 3.4375]);
    expect(probeLevels(4.9)).toEqual([4.5, 5.5]);
    expect(probeLevels(12)).toEqual([6.5625, 8.5]);
  });
});

describe("calibrateProblem", () => {
  it("makes a group of equal tensors at one type sum to a D^b", () => {
    const problem = [tensor("blk.0.ffn_up_exps.weight", 65536, 1), tensor("blk.1.ffn_up_exps.weight", 65536, 1), tensor("blk.2.ffn_up_exps.weight", 65536, 1)];
    const fit: GroupFit = { group: "ffn_up_exps", tensors: 3, a: 0.02, b: 0.6, probes: [] };
    const cal = calibrateProblem(problem, new Map([["ffn_up_exps", fit]]), tensorGroup);
    for (const k of [0, 2, 5]) {
      const D = problem.reduce((s, t) => s + t.candidates[k]!.damage, 0);
      const sum = cal.reduce((s, t) => s + t.candidates[k]!.damage, 0);
      expect(sum).toBeCloseTo(0.02 * D ** 0.6, 12);
    }
  });
});

describe("calibratedTargetMix", () => {
  // groups whose KLD per unit of estimate differs by 100x and that bend differently: the estimate alone misallocates
  const problem = [
    tensor("output.weight", 4 * 65536, 1),
    tensor("token_embd.weight", 4 * 65536, 1),
    tensor("blk.0.attn_q_a.weight", 65536, 1),
    tensor("blk.0.ffn_up_exps.weight", 16 * 65536, 4),
    tensor("blk.0.ffn_down_exps.weight", 16 * 65536, 4),
  ];
  const hidden = { output: { a: 0.3, b: 1.05 }, token_embd: { a: 0.4, b: 0.6 }, attn_q_a: { a: 0.01, b: 0.5 }, ffn_up_exps: { a: 0.003, b: 0.8 }, ffn_down_exps: { a: 0.006, b: 0.7 } };
  const floor = 3e-5;
  const f = truth(problem, hidden, floor);
  const min = problem.reduce((s, t) => s + t.candidates[0]!.bytes, 0);
  const max = problem.reduce((s, t) => s + t.candidates[t.candidates.length - 1]!.bytes, 0);

  it("finds the allocation of least true KLD at every budget, where the estimate alone does not", async () => {
    let estimateWorse = 0;
    for (let i = 1; i <= 9; i++) {
      const budget = min + ((max - min) * i) / 10;
      const calls: number[] = [];
      const r = await calibratedTargetMix(problem, budget, async (types) => {
        const k = f(types);
        calls.push(k);
        return k;
      });
      const best = bruteForce(problem, budget, f);
      expect(r.solution.bytes).toBeLessThanOrEqual(budget);
      expect(r.measuredKld).toBeCloseTo(best, 12);
      expect(r.predictedKld).toBeCloseTo(r.measuredKld, 12);
      expect(r.floor).toBe(floor);
      // floor + two probes per group + the chosen allocation
      expect(r.measurements).toBe(2 + 2 * 5);
      expect(calls.length).toBe(r.measurements);
      for (const fit of r.fits) {
        const h = hidden[fit.group as keyof typeof hidden];
        if (fit.probes[0]!.damage !== fit.probes[1]!.damage) {
          expect(fit.a).toBeCloseTo(h.a, 8);
          expect(fit.b).toBeCloseTo(h.b, 8);
        }
      }
      const est = solveTargetMix(problem, budget);
      if (f(new Map(est.choices.map((c) => [c.name, c.type]))) > best * 1.05) estimateWorse++;
    }
    expect(estimateWorse).toBeGreaterThan(0);
  });

  it("probes each group alone: every other tensor at the reference type", async () => {
    const seen: ReadonlyMap<string, GgmlType>[] = [];
    await calibratedTargetMix(problem, (min + max) / 2, async (types) => {
      seen.push(new Map(types));
      return f(types);
    });
    expect([...seen[0]!.values()].every((t) => t.id === BF16.id)).toBe(true);
    for (const types of seen.slice(1, -1)) {
      const quantized = [...types].filter(([, t]) => t.id !== BF16.id).map(([n]) => tensorGroup(n));
      expect(new Set(quantized).size).toBe(1);
    }
  });

  it("refuses a measurement that is not a number", async () => {
    await expect(calibratedTargetMix(problem, max, async () => NaN)).rejects.toThrow(/not a number/);
  });
});
