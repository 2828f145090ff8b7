/**
 * Scoring statistics, float64 over the float32 logits of the whole vocabulary, per scored position:
 *   nll = logsumexp(logits) − logits[target];
 *   KLD = Σ_i p_ref,i · (log p_ref,i − log p_cand,i)   (KL(P_ref ‖ P_cand), nats, exact: llama.cpp's
 *         figure comes from 16-bit log-probs of the base floored 16 nats under the top, so it differs
 *         in the last digits);
 *   Δp  = p_cand(target) − p_ref(target);
 *   same top = argmax cand == argmax ref (first index on ties, as llama.cpp).
 * The summary uses llama.cpp's estimators and names: "Mean PPL(Q)", "Mean PPL(base)",
 * "Cor(ln(PPL(Q)), ln(PPL(base)))", "Mean ln(PPL(Q)/PPL(base))", "Mean PPL(Q)/PPL(base)",
 * "Mean PPL(Q)-PPL(base)", "Mean KLD" and its percentiles (linear interpolation), "Mean Δp" and its
 * percentiles, "RMS Δp", "Same top p", each with llama.cpp's ± uncertainty.
 */

import { loadNative } from "../quant/native.js";

/** A value with llama.cpp's ± uncertainty. */
export interface Estimate {
  value: number;
  uncertainty: number;
}

export interface PerplexityStats {
  /** exp(mean NLL) over the scored tokens. */
  ppl: number;
  /** llama-perplexity's "+/-": ppl · sqrt((mean(nll²) − mean(nll)²) / (count − 1)). */
  uncertainty: number;
  /** Sum of NLL (nats). */
  nll: number;
  tokens: number;
  /** NLL sum of each sequence (chunk / window), in order. */
  sequenceNll: number[];
}

/** llama.cpp's KL-divergence summary; Δp and "Same top p" in percent as llama.cpp prints them. */
export interface KldSummary {
  tokens: number;
  meanPplQ: Estimate;
  meanPplBase: Estimate;
  /** "Cor(ln(PPL(Q)), ln(PPL(base)))" in percent. */
  corLnPplPercent: number;
  meanLnPplRatio: Estimate;
  meanPplRatio: Estimate;
  meanPplDiff: Estimate;
  meanKld: Estimate;
  /** "Maximum KLD", "99.9% KLD", … "Median KLD", … "Minimum KLD". */
  kld: Record<KldPoint, number>;
  meanDeltaPPercent: Estimate;
  /** "Maximum Δp" … "Minimum Δp", percent. */
  deltaPPercent: Record<DeltaPPoint, number>;
  rmsDeltaPPercent: Estimate;
  sameTopPPercent: Estimate;
}

export const KLD_POINTS = ["maximum", "99.9", "99.0", "95.0", "90.0", "median", "10.0", "5.0", "1.0", "0.1", "minimum"] as const;
export const DELTA_P_POINTS = ["maximum", "99.9", "99.0", "95.0", "90.0", "75.0", "median", "25.0", "10.0", "5.0", "1.0", "0.1", "minimum"] as const;
export type KldPoint = (typeof KLD_POINTS)[number];
export type DeltaPPoint = (typeof DELTA_P_POINTS)[number];

/** Per-position log-softmax facts of one float32 logit row, in float64. */
export interface RowFacts {
  max: number;
  argmax: number;
  /** log Σ exp(logit) */
  lse: number;
}

const factsOut = new Float64Array(3);
let nativeFacts: ((logits: Float32Array, off: number, vocab: number, out: Float64Array) => void) | null | undefined;

/** rowFacts in the addon when it is built (the same loops in C++; see native/src/scores.cc), else rowFactsTs. */
function rowFacts(logits: Float32Array, off: number, vocab: number): RowFacts {
  if (nativeFacts === undefined) {
    const n = loadNative();
    nativeFacts = n ? (l, o, v, out) => n.logitRowFacts(l, o, v, out) : null;
  }
  if (!nativeFacts) return rowFactsTs(logits, off, vocab);
  nativeFacts(logits, off, vocab, factsOut);
  return { max: factsOut[0]!, argmax: factsOut[1]!, lse: factsOut[2]! };
}

export function rowFactsTs(logits: Float32Array, off: number, vocab: number): RowFacts {
  let max = -Infinity;
  let argmax = 0;
  for (let j = 0; j < vocab; j++) {
    const v = logits[off + j]!;
    if (v > max) {
      max = v;
      argmax = j;
    }
  }
  let sum = 0;
  for (let j = 0; j < vocab; j++) sum += Math.exp(logits[off + j]! - max);
  return { max, argmax, lse: max + Math.log(sum) };
}

/** KL(P_ref ‖ P_cand) of two rows, float64. */
function rowKld(ref: Float32Array, refOff: number, r: RowFacts, cand: Float32Array, candOff: number, c: RowFacts, vocab: number): number {
  let kld = 0;
  for (let j = 0; j < vocab; j++) {
    const lr = ref[refOff + j]! - r.lse;
    if (lr === -Infinity) continue;
    kld += Math.exp(lr) * (lr - (cand[candOff + j]! - c.lse));
  }
  return kld;
}

class Sums {
  nll = 0;
  nll2 = 0;
  nllBase = 0;
  nllBase2 = 0;
  nllNllBase = 0;
  kld = 0;
  kld2 = 0;
  pDiff = 0;
  pDiff2 = 0;
  pDiff4 = 0;
  sameTop = 0;
  count = 0;
}

/** llama.cpp's mean_and_uncertainty. */
function meanAndUncertainty(sum: number, sum2: number, count: number): Estimate {
  if (count < 1) return { value: 0, uncertainty: 0 };
  const f = sum / count;
  const df = sum2 / count - f * f;
  return { value: f, uncertainty: df > 0 && count > 10 ? Math.sqrt(df / (count - 1)) : 0 };
}

function covariance(suma: number, sumb: number, sumab: number, count: number): number {
  if (count < 10) return 0;
  return (sumab / count - (suma / count) * (sumb / count)) / (count - 1);
}

/** llama.cpp's percentile of sorted values: linear interpolation at fraction·(n−1). */
function percentile(sorted: Float64Array, fraction: number): number {
  if (sorted.length === 0) return NaN;
  if (fraction <= 0) return sorted[0]!;
  if (fraction >= 1) return sorted[sorted.length - 1]!;
  let p = fraction * (sorted.length - 1);
  const ip = Math.floor(p);
  p -= ip;
  return (1 - p) * sorted[ip]! + p * sorted[Math.min(ip + 1, sorted.length - 1)]!;
}

function median(sorted: Float64Array): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  return n % 2 === 0 ? 0.5 * (sorted[n / 2]! + sorted[n / 2 - 1]!) : sorted[(n - 1) / 2]!;
}

function summarize(s: Sums, kldValues: Float64Array, pDiffValues: Float64Array): KldSummary {
  const n = s.count;
  const logPpl = meanAndUncertainty(s.nll, s.nll2, n);
  const logPplBase = meanAndUncertainty(s.nllBase, s.nllBase2, n);
  const ppl = Math.exp(logPpl.value);
  const pplBase = Math.exp(logPplBase.value);
  const cov = covariance(s.nll, s.nllBase, s.nllNllBase, n);
  const ratioLog = logPpl.value - logPplBase.value;
  const ratioLogUnc = Math.sqrt(Math.max(0, logPpl.uncertainty ** 2 + logPplBase.uncertainty ** 2 - 2 * cov));
  const pplUnc = ppl * logPpl.uncertainty;
  const pplBaseUnc = pplBase * logPplBase.uncertainty;
  const pplCov = ppl * pplBase * cov;
  const kldSorted = Float64Array.from(kldValues).sort();
  const pdSorted = Float64Array.from(pDiffValues).sort();
  const kld = {} as Record<KldPoint, number>;
  for (const k of KLD_POINTS) {
    kld[k] = k === "maximum" ? kldSorted[n - 1] ?? NaN : k === "minimum" ? kldSorted[0] ?? NaN : k === "median" ? median(kldSorted) : percentile(kldSorted, Number(k) / 100);
  }
  const deltaP = {} as Record<DeltaPPoint, number>;
  for (const k of DELTA_P_POINTS) {
    const v = k === "maximum" ? pdSorted[n - 1] ?? NaN : k === "minimum" ? pdSorted[0] ?? NaN : k === "median" ? median(pdSorted) : percentile(pdSorted, Number(k) / 100);
    deltaP[k] = 100 * v;
  }
  const pDiff = meanAndUncertainty(s.pDiff, s.pDiff2, n);
  const mse = meanAndUncertainty(s.pDiff2, s.pDiff4, n);
  const rms = Math.sqrt(mse.value);
  const same = n > 0 ? s.sameTop / n : 0;
  return {
    tokens: n,
    meanPplQ: { value: ppl, uncertainty: pplUnc },
    meanPplBase: { value: pplBase, uncertainty: pplBaseUnc },
    corLnPplPercent: logPpl.uncertainty > 0 && logPplBase.uncertainty > 0 ? (100 * cov) / (logPpl.uncertainty * logPplBase.uncertainty) : NaN,
    meanLnPplRatio: { value: ratioLog, uncertainty: ratioLogUnc },
    meanPplRatio: { value: Math.exp(ratioLog), uncertainty: Math.exp(ratioLog) * ratioLogUnc },
    meanPplDiff: { value: ppl - pplBase, uncertainty: Math.sqrt(Math.max(0, pplUnc ** 2 + pplBaseUnc ** 2 - 2 * pplCov)) },
    meanKld: meanAndUncertainty(s.kld, s.kld2, n),
    kld,
    meanDeltaPPercent: { value: 100 * pDiff.value, uncertainty: 100 * pDiff.uncertainty },
    deltaPPercent: deltaP,
    rmsDeltaPPercent: { value: 100 * rms, uncertainty: rms > 0 ? (100 * 0.5 * mse.uncertainty) / rms : 0 },
    sameTopPPercent: { value: 100 * same, uncertainty: n > 1 ? 100 * Math.sqrt((same * (1 - same)) / (n - 1)) : 0 },
  };
}

function pplStats(nll: number, nll2: number, count: number, sequenceNll: number[]): PerplexityStats {
  const mean = count > 0 ? nll / count : NaN;
  const ppl = Math.exp(mean);
  const v = nll2 / count - mean * mean;
  return { ppl, uncertainty: v > 0 && count > 1 ? ppl * Math.sqrt(v / (count - 1)) : 0, nll, tokens: count, sequenceNll };
}

/**
 * Accumulates the scored positions of a run: the candidate's NLL and, with a reference, the
 * reference's NLL, KLD, Δp and top-1 agreement, per position and per sequence.
 */
export class Scores {
  private readonly s = new Sums();
  private readonly kldValues: Float64Array;
  private readonly pDiffValues: Float64Array;
  private readonly candSeqNll: number[] = [];
  private readonly refSeqNll: number[] = [];
  private seqNll = 0;
  private seqNllBase = 0;

  /** `total`: the positions that will be scored (sizes the percentile buffers). */
  constructor(total: number, private readonly withReference: boolean) {
    this.kldValues = withReference ? new Float64Array(total) : new Float64Array(0);
    this.pDiffValues = withReference ? new Float64Array(total) : new Float64Array(0);
  }

  get count(): number {
    return this.s.count;
  }

  /** Scores the logit row at `off` predicting `target` (the same row of `ref` when there is a reference). */
  add(cand: Float32Array, ref: Float32Array | null, off: number, vocab: number, target: number): void {
    const s = this.s;
    const c = rowFacts(cand, off, vocab);
    const nll = c.lse - cand[off + target]!;
    this.seqNll += nll;
    s.nll += nll;
    s.nll2 += nll * nll;
    if (ref) {
      const r = rowFacts(ref, off, vocab);
      const nllBase = r.lse - ref[off + target]!;
      this.seqNllBase += nllBase;
      s.nllBase += nllBase;
      s.nllBase2 += nllBase * nllBase;
      s.nllNllBase += nll * nllBase;
      const kld = rowKld(ref, off, r, cand, off, c, vocab);
      s.kld += kld;
      s.kld2 += kld * kld;
      const pDiff = Math.exp(-nll) - Math.exp(-nllBase);
      s.pDiff += pDiff;
      s.pDiff2 += pDiff * pDiff;
      s.pDiff4 += pDiff ** 4;
      if (c.argmax === r.argmax) s.sameTop++;
      this.kldValues[s.count] = kld;
      this.pDiffValues[s.count] = pDiff;
    }
    s.count++;
  }

  /** Closes the current sequence (its NLL sums go to `sequenceNll`). */
  endSequence(): void {
    this.candSeqNll.push(this.seqNll);
    if (this.withReference) this.refSeqNll.push(this.seqNllBase);
    this.seqNll = 0;
    this.seqNllBase = 0;
  }

  /** Running perplexities and mean KLD so far. */
  running(): { ppl: number; pplBase?: number; meanKld?: number } {
    const s = this.s;
    return { ppl: Math.exp(s.nll / s.count), ...(this.withReference ? { pplBase: Math.exp(s.nllBase / s.count), meanKld: s.kld / s.count } : {}) };
  }

  candidate(): PerplexityStats {
    return pplStats(this.s.nll, this.s.nll2, this.s.count, this.candSeqNll);
  }

  reference(): PerplexityStats {
    return pplStats(this.s.nllBase, this.s.nllBase2, this.s.count, this.refSeqNll);
  }

  kld(): KldSummary {
    return summarize(this.s, this.kldValues, this.pDiffValues);
  }
}
