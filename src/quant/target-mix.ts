/**
 * Size-targeted type allocation (`to-gguf --target-size / --target-bpw`): given the tensors to
 * quantize, each with its candidate types, their bytes and an estimated damage, choose one type per
 * tensor so the total bytes stay within a budget while the summed damage is smallest.
 *
 * Damage model (one number per tensor and type; see `tensorDamage`):
 *
 *   damage = reads per token x (sum_rows sum_j w_j (x_j - q_j)^2) / (sum_rows sum_j w_j x_j^2)
 *
 * over a sample of rows, w = the imatrix column weights of the row's matrix (1 without). With w the
 * mean squared activations, the numerator is the expected squared error the tensor adds to its
 * output, the denominator the expected output energy: their ratio is the noise-to-signal ratio of the
 * tensor's output, which is what the layers after it see (they renormalise). It does not depend on the
 * tensor's scale or on how many rows were sampled, so tensors of different shapes compare. Reads per
 * token: 1 for attention, dense FFN, shared experts, embeddings and output; `topK` for a stack of
 * routed experts (each of its `nExpert` matrices is read by topK/nExpert of the tokens, and they share
 * one type); output.weight counts nLayer times (see `readsPerToken`).
 *
 * Without readable data (an all-zero, sparse file, or a tensor whose sample has no energy) the ratio
 * is the type's noise-to-signal ratio on gaussian rows (`gaussianNsr`, measured once with the real
 * quantizer): roughly c_type x 2^(-2 bpw). Callers flag such tensors (`analytic`).
 *
 * Search (`solveTargetMix`): exact for small instances (a Pareto-frontier dynamic program over the
 * tensors); otherwise Lagrangian: every tensor starts at its smallest type and moves up the lower
 * convex hull of its (bytes, damage) points, best damage reduction per byte first, as long as the
 * step fits; then single-tensor changes that still fit are taken, largest reduction first. A plan the
 * hull walk reaches without skipping a step is optimal for its own byte count.
 */
import { DeepcastError } from "../errors.js";
import { ggmlNbytes, ggmlQuantTypes, ggmlType, ggmlTypes, type GgmlType } from "../formats/ggml-types.js";
import { dequantizeRows, quantizeRows } from "./ggml.js";
import { typeFallback } from "./mix.js";

// ---------------------------------------------------------------------------------------------
// candidates
// ---------------------------------------------------------------------------------------------

/** IQ types, and any type ggml refuses to write without one, are only candidates with imatrix data. */
export function needsImatrixData(t: GgmlType): boolean {
  return t.imatrix === "required" || t.name.startsWith("IQ");
}

/**
 * The types a tensor of dims `ne` can get: every type deepcast quantizes (the table's `quantizer`
 * flag: the set grows as kernels land), block types through llama-quantize's shape fallback, plus
 * BF16 (the input values as they are). IQ types only when `hasImatrix` (imatrix data for this tensor).
 */
export function candidateTypes(ne: readonly number[], opts: { hasImatrix: boolean; types?: readonly GgmlType[]; unwritable?: boolean }): GgmlType[] {
  const ne0 = ne[0] ?? 1;
  const out = new Map<number, GgmlType>();
  // `unwritable` (dry runs only): also the block types this build has no quantizer for yet
  const pool = opts.types ?? (opts.unwritable ? ggmlTypes().filter((t) => t.quantizer || (t.quantized && isWeightType(t))) : ggmlQuantTypes());
  for (const t of pool) {
    if (!isWeightType(t)) continue;
    if (t.name === "F32" || t.name === "F16") continue; // BF16 holds the input exactly in half the bytes of F32
    if (!t.quantized && t.name !== "BF16") continue;
    if (needsImatrixData(t) && !opts.hasImatrix) continue;
    let r: GgmlType;
    try {
      r = typeFallback(ne0, t);
    } catch {
      continue; // no fallback for this block size
    }
    if ((!r.quantizer && !opts.unwritable) || (needsImatrixData(r) && !opts.hasImatrix)) continue;
    if (r.quantized && ne0 % r.blockSize !== 0) continue;
    out.set(r.id, r);
  }
  return [...out.values()];
}

/**
 * Block types a general weight can be written as: not the activation-only Q8_1/Q8_K, not the
 * ternary TQ1_0/TQ2_0 (only for ternary-trained weights) nor the FP4 formats of models trained for them.
 */
function isWeightType(t: GgmlType): boolean {
  return !["Q8_1", "Q8_K", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0"].includes(t.name);
}

// ---------------------------------------------------------------------------------------------
// damage
// ---------------------------------------------------------------------------------------------

/** Squared-error sums over sampled rows for one tensor and type. */
export interface ErrorSums {
  /** sum_rows sum_j w_j (x_j - q_j)^2 */
  err: number;
  /** sum_rows sum_j w_j x_j^2 */
  signal: number;
}

/**
 * How much a tensor's output noise counts per token: read count x sensitivity. Read count: `topK` for
 * a routed-expert stack (`_exps`), else 1. Sensitivity: a tensor inside a block adds its output to the
 * residual stream, one of about 2 x nLayer contributions, so its noise is diluted there; output.weight
 * writes the logits directly, so its noise counts nLayer times (llama.cpp's mixes keep it at Q6_K for
 * the same reason).
 */
export function readsPerToken(name: string, moe: { nExpert: number; topK: number; nLayer?: number }): number {
  if (name === "output.weight") return Math.max(1, moe.nLayer ?? 1);
  return name.includes("_exps") && moe.nExpert > 0 ? moe.topK : 1;
}

/** Accumulates the weighted squared error of quantizing `rows` rows of `values` as `type`. */
export function rowErrorSums(type: GgmlType, values: Float32Array, rows: number, ne0: number, w: Float32Array | null): ErrorSums {
  let err = 0;
  let signal = 0;
  const q = dequantizeRows(type, quantizeRows(type, values, rows, ne0, w), rows, ne0);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < ne0; j++) {
      const x = values[r * ne0 + j]!;
      const d = x - q[r * ne0 + j]!;
      const wj = w ? w[j]! : 1;
      err += wj * d * d;
      signal += wj * x * x;
    }
  }
  return { err, signal };
}

const nsrCache = new Map<number, number>();

/**
 * Noise-to-signal ratio of `type` on standard gaussian rows (16 rows of 4096, fixed seed), measured
 * once per process with the real quantizer: the stand-in estimate when there is no data to sample.
 */
export function gaussianNsr(type: GgmlType): number {
  const hit = nsrCache.get(type.id);
  if (hit !== undefined) return hit;
  const rows = 16;
  const ne0 = 4096;
  const v = gaussianRows(rows * ne0, 12345);
  // ggml's IQ1_S/IQ2_XXS/IQ2_XS quantizers assert an imatrix: uniform weights stand for "no importance"
  const w = type.imatrix === "required" ? new Float32Array(ne0).fill(1) : null;
  const s = rowErrorSums(type, v, rows, ne0, w);
  const nsr = s.err / s.signal;
  nsrCache.set(type.id, nsr);
  return nsr;
}

/** Deterministic standard normal values (xorshift32 + Box-Muller). */
export function gaussianRows(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const u = () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u()));
    const a = 2 * Math.PI * u();
    out[i] = r * Math.cos(a);
    if (i + 1 < n) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

/** Bits per weight of a type. */
export function bitsPerWeight(t: GgmlType): number {
  return (8 * t.typeSize) / t.blockSize;
}

let nsrConstant: number | undefined;

/**
 * The stand-in NSR of a type: measured on gaussian rows where this build quantizes it; for a type
 * without a quantizer yet, 2^(-2 bpw) x the median of (NSR x 2^(2 bpw)) over the block types it has.
 */
export function analyticNsr(type: GgmlType): number {
  if (type.quantizer) return gaussianNsr(type);
  if (nsrConstant === undefined) {
    const c = ggmlQuantTypes().filter((t) => t.quantized).map((t) => gaussianNsr(t) * 2 ** (2 * bitsPerWeight(t))).sort((a, b) => a - b);
    nsrConstant = c[Math.floor(c.length / 2)]!;
  }
  return nsrConstant * 2 ** (-2 * bitsPerWeight(type));
}

/** The damage of one (tensor, type): reads x NSR; `analytic` when the gaussian stand-in was used. */
export function tensorDamage(type: GgmlType, sums: ErrorSums | undefined, reads: number): { damage: number; analytic: boolean } {
  if (sums && sums.signal > 0 && Number.isFinite(sums.signal) && Number.isFinite(sums.err)) {
    return { damage: (reads * sums.err) / sums.signal, analytic: false };
  }
  return { damage: reads * analyticNsr(type), analytic: true };
}

// ---------------------------------------------------------------------------------------------
// the search
// ---------------------------------------------------------------------------------------------

export interface TargetCandidate {
  type: GgmlType;
  bytes: number;
  damage: number;
}

export interface TargetTensor {
  name: string;
  /** At least one. */
  candidates: readonly TargetCandidate[];
}

export interface TargetChoice extends TargetCandidate {
  name: string;
}

export interface TargetSolution {
  /** In the order of the input tensors. */
  choices: TargetChoice[];
  bytes: number;
  damage: number;
  budget: number;
  /** "exact" (Pareto dynamic program) or "lagrangian" (hull walk + fill). */
  method: "exact" | "lagrangian";
}

export interface SolveOptions {
  /** Force a method (tests); default: exact when the frontier stays small, else lagrangian. */
  method?: "exact" | "lagrangian";
  /** Frontier size beyond which the exact search gives up (default 20,000). */
  maxFrontier?: number;
}

/** The exact search is tried for at most this many tensors (its cost grows fast; the real model has ~1,100: Lagrangian). */
const EXACT_MAX_TENSORS = 16;

/** Candidates sorted by bytes with the dominated ones (no less damage for more bytes) removed. */
function efficient(c: readonly TargetCandidate[]): TargetCandidate[] {
  const sorted = [...c].sort((a, b) => a.bytes - b.bytes || a.damage - b.damage || a.type.id - b.type.id);
  const out: TargetCandidate[] = [];
  for (const x of sorted) if (out.length === 0 || x.damage < out[out.length - 1]!.damage) out.push(x);
  return out;
}

/** Lower convex hull of efficient points (bytes ascending, damage descending). */
function hull(pts: readonly TargetCandidate[]): TargetCandidate[] {
  const h: TargetCandidate[] = [];
  for (const p of pts) {
    while (h.length >= 2) {
      const a = h[h.length - 2]!;
      const b = h[h.length - 1]!;
      // b is above the segment a-p: drop it
      if ((b.damage - a.damage) * (p.bytes - a.bytes) >= (p.damage - a.damage) * (b.bytes - a.bytes)) h.pop();
      else break;
    }
    h.push(p);
  }
  return h;
}

function check(tensors: readonly TargetTensor[], budget: number): TargetCandidate[][] {
  if (!Number.isFinite(budget)) throw new DeepcastError(`invalid size budget ${budget}`, { code: "USAGE" });
  return tensors.map((t) => {
    if (t.candidates.length === 0) throw new DeepcastError("no candidate type for this tensor", { tensor: t.name });
    for (const c of t.candidates) {
      if (!Number.isFinite(c.bytes) || c.bytes < 0 || !Number.isFinite(c.damage) || c.damage < 0) {
        throw new DeepcastError(`invalid estimate for ${c.type.name}: ${c.bytes} bytes, damage ${c.damage}`, { tensor: t.name });
      }
    }
    return efficient(t.candidates);
  });
}

/**
 * Chooses one candidate per tensor with total bytes <= `budget`, minimising the summed damage.
 * Throws (USAGE) when even the smallest types exceed the budget.
 */
export function solveTargetMix(tensors: readonly TargetTensor[], budget: number, opts: SolveOptions = {}): TargetSolution {
  const eff = check(tensors, budget);
  const minBytes = eff.reduce((a, c) => a + c[0]!.bytes, 0);
  if (minBytes > budget) {
    throw new DeepcastError(`the target is too small: the smallest types available take ${minBytes} bytes, the budget is ${budget}`, { code: "USAGE" });
  }
  let pick: number[] | null = null;
  let method: TargetSolution["method"] = "lagrangian";
  if (opts.method === "exact" || (opts.method === undefined && eff.length <= EXACT_MAX_TENSORS)) {
    pick = exactSearch(eff, budget, opts.method === "exact" ? Infinity : opts.maxFrontier ?? 20_000);
    if (pick) method = "exact";
    else if (opts.method === "exact") throw new DeepcastError("internal: exact search gave up");
  }
  pick ??= lagrangianSearch(eff, budget);
  const choices = tensors.map((t, i) => ({ name: t.name, ...eff[i]![pick![i]!]! }));
  return {
    choices,
    bytes: choices.reduce((a, c) => a + c.bytes, 0),
    damage: choices.reduce((a, c) => a + c.damage, 0),
    budget,
    method,
  };
}

/** Index into each tensor's efficient list, or null when the frontier grows past `cap`. */
function exactSearch(eff: readonly TargetCandidate[][], budget: number, cap: number): number[] | null {
  // suffix minimum bytes: a partial plan that cannot fit with the rest at their smallest is dropped
  const restMin = new Array<number>(eff.length + 1).fill(0);
  for (let i = eff.length - 1; i >= 0; i--) restMin[i] = restMin[i + 1]! + eff[i]![0]!.bytes;
  interface State { bytes: number; damage: number; path: Int32Array }
  let frontier: State[] = [{ bytes: 0, damage: 0, path: new Int32Array(0) }];
  for (let i = 0; i < eff.length; i++) {
    const next: State[] = [];
    for (const s of frontier) {
      for (let k = 0; k < eff[i]!.length; k++) {
        const c = eff[i]![k]!;
        const bytes = s.bytes + c.bytes;
        if (bytes + restMin[i + 1]! > budget) break; // sorted by bytes
        const path = new Int32Array(i + 1);
        path.set(s.path);
        path[i] = k;
        next.push({ bytes, damage: s.damage + c.damage, path });
      }
    }
    next.sort((a, b) => a.bytes - b.bytes || a.damage - b.damage);
    frontier = [];
    for (const s of next) if (frontier.length === 0 || s.damage < frontier[frontier.length - 1]!.damage) frontier.push(s);
    if (frontier.length > cap) return null;
  }
  return [...frontier[frontier.length - 1]!.path];
}

function lagrangianSearch(eff: readonly TargetCandidate[][], budget: number): number[] {
  const hulls = eff.map(hull);
  const at = hulls.map(() => 0); // index into hull
  let bytes = hulls.reduce((a, h) => a + h[0]!.bytes, 0);
  // every next hull step, by damage reduction per byte (largest first); a max-heap
  interface Step { i: number; slope: number }
  const heap: Step[] = [];
  const less = (a: Step, b: Step) => a.slope < b.slope || (a.slope === b.slope && a.i > b.i);
  const push = (s: Step) => {
    heap.push(s);
    for (let k = heap.length - 1; k > 0;) {
      const p = (k - 1) >> 1;
      if (!less(heap[p]!, heap[k]!)) break;
      [heap[p], heap[k]] = [heap[k]!, heap[p]!];
      k = p;
    }
  };
  const pop = (): Step => {
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      for (let k = 0; ;) {
        const l = 2 * k + 1;
        const r = l + 1;
        let m = k;
        if (l < heap.length && less(heap[m]!, heap[l]!)) m = l;
        if (r < heap.length && less(heap[m]!, heap[r]!)) m = r;
        if (m === k) break;
        [heap[m], heap[k]] = [heap[k]!, heap[m]!];
        k = m;
      }
    }
    return top;
  };
  const stepOf = (i: number): Step | null => {
    const h = hulls[i]!;
    const a = h[at[i]!];
    const b = h[at[i]! + 1];
    if (!a || !b) return null;
    return { i, slope: (a.damage - b.damage) / (b.bytes - a.bytes) };
  };
  for (let i = 0; i < hulls.length; i++) {
    const s = stepOf(i);
    if (s) push(s);
  }
  while (heap.length > 0) {
    const s = pop();
    const h = hulls[s.i]!;
    const delta = h[at[s.i]! + 1]!.bytes - h[at[s.i]!]!.bytes;
    if (bytes + delta > budget) continue; // this tensor's later steps cost more: it stays
    bytes += delta;
    at[s.i]!++;
    const n = stepOf(s.i);
    if (n) push(n);
  }
  // indices into eff; then fill what is left with the best single changes
  const pick = hulls.map((h, i) => eff[i]!.indexOf(h[at[i]!]!));
  for (;;) {
    let best: { i: number; k: number; gain: number } | null = null;
    for (let i = 0; i < eff.length; i++) {
      const cur = eff[i]![pick[i]!]!;
      for (let k = pick[i]! + 1; k < eff[i]!.length; k++) {
        const c = eff[i]![k]!;
        if (bytes - cur.bytes + c.bytes > budget) break;
        const gain = cur.damage - c.damage;
        if (gain > 0 && (!best || gain > best.gain)) best = { i, k, gain };
      }
    }
    if (!best) break;
    bytes += eff[best.i]![best.k]!.bytes - eff[best.i]![pick[best.i]!]!.bytes;
    pick[best.i] = best.k;
  }
  return pick;
}

// ---------------------------------------------------------------------------------------------
// targets
// ---------------------------------------------------------------------------------------------

/** `--target-size`: bytes, or a number with K/M/G/T (powers of 1000, as sizes are printed); "180G", "1.5T". */
export function parseTargetSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$/i.exec(s.trim());
  if (!m) throw new DeepcastError(`invalid --target-size ${JSON.stringify(s)}: a number of bytes, optionally followed by K, M, G or T (powers of 1000), e.g. 180G`, { code: "USAGE" });
  const n = Math.floor(Number(m[1]) * ({ "": 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12 } as const)[m[2]!.toUpperCase() as "" | "K" | "M" | "G" | "T"]);
  if (!Number.isSafeInteger(n) || n <= 0) throw new DeepcastError(`invalid --target-size ${JSON.stringify(s)}: must be positive`, { code: "USAGE" });
  return n;
}

/** How far below the target a plan may land (the file must be within 3% below it). */
export const TARGET_TOLERANCE = 0.03;

/** Bytes of a tensor of dims `ne` as `type`. */
export function tensorBytes(type: GgmlType | string, ne: readonly number[], name = ""): number {
  return ggmlNbytes(ggmlType(type), ne, name);
}
