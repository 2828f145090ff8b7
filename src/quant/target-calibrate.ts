/**
 * The measured step of `to-gguf --target-size ... --target-measure TEXT`: the estimate of
 * ./target-mix.ts (imatrix-weighted noise-to-signal ratio x reads per token) ranks the types of one
 * tensor well, but how much a unit of it costs in the model's output differs by two orders of
 * magnitude between kinds of tensor (on tiny-dsv3, output.weight's KLD per unit of estimate is about
 * 40x that of a routed-expert stack, token_embd's 100x), and the KLD does not grow linearly in it.
 * So the estimate is calibrated by measurement, per group of tensors (a group: the same tensor in
 * every layer, e.g. `ffn_down_exps`):
 *
 *  1. `floor` = KLD with every planned tensor at the reference type (BF16);
 *  2. per group and per probe level (two bits-per-weight levels around the target's mean), the KLD
 *     with only that group quantized (each tensor at its candidate nearest the level, the rest at
 *     the reference type), minus the floor, against D = the group's summed estimate at those types;
 *  3. fit KLD_g(D) = a_g D^b_g through the two points (b clamped to [0.25, 1.5]; one usable point:
 *     b = 1), and give every candidate of a tensor of the group the damage a_g n^(b-1) d^b (n the
 *     group's tensor count, d the tensor's estimate): summed over a group whose tensors sit at one
 *     level, that is a_g D^b, so the search (solveTargetMix, unchanged) minimises the sum of the
 *     groups' fitted KLDs under the size budget;
 *  4. the chosen allocation is measured, and the fitted sum reported beside it.
 *
 * `measure` is the caller's: it scores an allocation (types by tensor name; tensors not named are at
 * the reference type) by mean KLD against the reference on a calibration text. 2 x groups + 2 calls.
 */
import { DeepcastError } from "../errors.js";
import { ggmlType, type GgmlType } from "../formats/ggml-types.js";
import { bitsPerWeight, solveTargetMix, type TargetSolution, type TargetTensor } from "./target-mix.js";

export type MeasureAllocation = (types: ReadonlyMap<string, GgmlType>) => Promise<number>;

export interface CalibrateOptions {
  /** The group of a tensor (default `tensorGroup`). */
  group?: (name: string) => string;
  /** Type every tensor outside the probed group sits at (default BF16). */
  reference?: GgmlType;
  /** Called after every measurement, for progress. */
  onMeasure?: (what: string, kld: number, index: number, count: number) => void;
}

export interface GroupFit {
  group: string;
  tensors: number;
  /** KLD_g(D) = a D^b (KLD above the floor, D the summed estimate). */
  a: number;
  b: number;
  probes: { bpw: number; damage: number; kld: number }[];
}

export interface CalibratedSolution {
  solution: TargetSolution;
  /** The problem with calibrated damages (the solution's damages are these). */
  problem: TargetTensor[];
  fits: GroupFit[];
  floor: number;
  /** Fitted KLD of the chosen allocation (floor + sum of the groups' fits) and its measurement. */
  predictedKld: number;
  measuredKld: number;
  measurements: number;
}

/** The group of a GGUF tensor name: the name without its layer, dense-layer FFNs apart from the MoE ones' shared experts by name already. */
export function tensorGroup(name: string): string {
  return name.replace(/^blk\.\d+\./, "").replace(/\.weight$/, "");
}

/** Bits-per-weight levels of the two probes: the standard levels around `meanBpw`. */
export function probeLevels(meanBpw: number): [number, number] {
  const levels = [2.625, 3.4375, 4.5, 5.5, 6.5625, 8.5]; // Q2_K .. Q6_K, Q8_0
  let i = levels.findIndex((l) => l > meanBpw) - 1;
  if (i < 0) i = meanBpw <= levels[0]! ? 0 : levels.length - 2;
  i = Math.min(i, levels.length - 2);
  return [levels[i]!, levels[i + 1]!];
}

/** The candidate of `t` whose bits per weight are nearest `bpw` (ties: the smaller). */
function nearest(t: TargetTensor, bpw: number): TargetTensor["candidates"][number] {
  let best = t.candidates[0]!;
  for (const c of t.candidates) {
    const d = Math.abs(bitsPerWeight(c.type) - bpw);
    const e = Math.abs(bitsPerWeight(best.type) - bpw);
    if (d < e || (d === e && c.bytes < best.bytes)) best = c;
  }
  return best;
}

/** a D^b through the usable points (kld > 0, damage > 0). */
export function fitPower(points: readonly { damage: number; kld: number }[]): { a: number; b: number } | null {
  const ok = points.filter((p) => p.kld > 0 && p.damage > 0 && Number.isFinite(p.kld) && Number.isFinite(p.damage));
  if (ok.length === 0) return null;
  if (ok.length === 1 || ok.every((p) => p.damage === ok[0]!.damage)) {
    const a = ok.reduce((s, p) => s + p.kld / p.damage, 0) / ok.length;
    return { a, b: 1 };
  }
  // least squares in log-log space
  const xs = ok.map((p) => Math.log(p.damage));
  const ys = ok.map((p) => Math.log(p.kld));
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < xs.length; i++) {
    sxy += (xs[i]! - mx) * (ys[i]! - my);
    sxx += (xs[i]! - mx) ** 2;
  }
  const b = Math.min(1.5, Math.max(0.25, sxy / sxx));
  return { a: Math.exp(my - b * mx), b };
}

/** The problem with every damage replaced by its group's fitted KLD share (see the module comment). */
export function calibrateProblem(problem: readonly TargetTensor[], fits: ReadonlyMap<string, GroupFit>, group: (name: string) => string): TargetTensor[] {
  return problem.map((t) => {
    const f = fits.get(group(t.name));
    if (!f) throw new DeepcastError(`internal: no fit for the group of ${t.name}`);
    const k = f.a * f.tensors ** (f.b - 1);
    return { name: t.name, candidates: t.candidates.map((c) => ({ ...c, damage: k * c.damage ** f.b })) };
  });
}

/** Measures, fits and solves: see the module comment. */
export async function calibratedTargetMix(problem: readonly TargetTensor[], budget: number, measure: MeasureAllocation, opts: CalibrateOptions = {}): Promise<CalibratedSolution> {
  const group = opts.group ?? tensorGroup;
  const ref = opts.reference ?? ggmlType("BF16");
  const groups = new Map<string, TargetTensor[]>();
  for (const t of problem) groups.set(group(t.name), [...(groups.get(group(t.name)) ?? []), t]);
  // the estimate's plan at this budget says where the bits will be: probe around its mean
  const first = solveTargetMix(problem, budget);
  const weights = problem.reduce((s, t) => s + t.candidates[0]!.bytes * 8 / bitsPerWeight(t.candidates[0]!.type), 0);
  const levels = probeLevels((8 * first.bytes) / weights);
  const count = 2 + 2 * groups.size;
  let n = 0;
  const run = async (what: string, types: ReadonlyMap<string, GgmlType>) => {
    const k = await measure(types);
    if (!Number.isFinite(k)) throw new DeepcastError(`the KLD measurement of ${what} is not a number`);
    opts.onMeasure?.(what, k, n, count);
    n++;
    return k;
  };
  const floor = await run("the reference types", new Map(problem.map((t) => [t.name, ref])));
  const fits = new Map<string, GroupFit>();
  for (const [g, ts] of groups) {
    const probes: GroupFit["probes"] = [];
    for (const bpw of levels) {
      const types = new Map(problem.map((t) => [t.name, ref]));
      let damage = 0;
      for (const t of ts) {
        const c = nearest(t, bpw);
        types.set(t.name, c.type);
        damage += c.damage;
      }
      probes.push({ bpw, damage, kld: (await run(`${g} at ${bpw} bpw`, types)) - floor });
    }
    // a group the measurement cannot see (below the floor's noise): its estimate at the smallest calibrated scale
    const fit = fitPower(probes) ?? { a: Number.MIN_VALUE, b: 1 };
    fits.set(g, { group: g, tensors: ts.length, ...fit, probes });
  }
  const calibrated = calibrateProblem(problem, fits, group);
  const solution = solveTargetMix(calibrated, budget);
  const sums = new Map<string, number>();
  const est = new Map(problem.map((t) => [t.name, t]));
  for (const c of solution.choices) {
    const d = est.get(c.name)!.candidates.find((x) => x.type.id === c.type.id)!.damage;
    sums.set(group(c.name), (sums.get(group(c.name)) ?? 0) + d);
  }
  let predictedKld = floor;
  for (const [g, f] of fits) predictedKld += f.a * (sums.get(g) ?? 0) ** f.b;
  const measuredKld = await run("the chosen allocation", new Map(solution.choices.map((c) => [c.name, c.type])));
  return { solution, problem: calibrated, fits: [...fits.values()], floor, predictedKld, measuredKld, measurements: n };
}
