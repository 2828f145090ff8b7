/**
 * Validation of a converted model: perplexity on a text, and with a reference model, the
 * KL-divergence statistics of llama.cpp's `llama-perplexity --kl-divergence`, computed without a
 * logit file: reference and candidate run side by side on the same token windows, a batch of windows
 * at a time (reference forward, then candidate forward, score, drop), so only one batch's logits of
 * each model are ever held.
 *
 * Two protocols cut the text's ids into model inputs (`EvalSequence`):
 *
 *  - `llama` (default) = llama-perplexity's default protocol: tokens = [BOS] + text ids (BOS when the
 *    tokenizer adds one); at least 2·n_ctx tokens; n_chunk = min(--chunks, floor(tokens / n_ctx));
 *    chunk k = tokens[k·n_ctx, (k+1)·n_ctx) run from position 0 with its first token replaced by BOS;
 *    positions first = floor(n_ctx/2) … n_ctx−2 are scored, position p predicting chunk token p+1:
 *    n_ctx − 1 − floor(n_ctx/2) tokens per chunk (255 for 512). The rest of the text is ignored.
 *  - `windows` = the tiny-dsv3 fixture's protocol (ppl.json): windows w = ids[i, i+W) for
 *    i = 0, W, 2W, … (the last one shorter), input [BOS] + w[0 … n−2], every position scored
 *    (position p predicts w[p]), so every text token is scored once. `--chunks` keeps the first N.
 *
 * Per scored position (float64 over the float32 logits of the whole vocabulary):
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
import { randomBytes } from "node:crypto";
import { open, rename, unlink, type FileHandle } from "node:fs/promises";
import { endianness } from "node:os";
import { basename, dirname, join } from "node:path";
import { DeepcastError } from "../errors.js";
import { forward, type ForwardOptions } from "./forward.js";
import { perplexityWindows } from "./perplexity.js";
import type { WeightSource } from "./weights.js";

export type Protocol = "llama" | "windows";
export const PROTOCOLS: readonly Protocol[] = ["llama", "windows"];
/** Default --ctx per protocol: llama-perplexity's -c 512, the fixture's 256-token windows. */
export const DEFAULT_CTX: Readonly<Record<Protocol, number>> = { llama: 512, windows: 256 };

/** One model input and the positions of it that are scored. */
export interface EvalSequence {
  /** Token ids run from position 0. */
  input: number[];
  /** First scored position: position first + i predicts targets[i]. */
  first: number;
  targets: number[];
}

export interface ProtocolOptions {
  protocol: Protocol;
  /** llama: n_ctx; windows: window length. */
  ctx: number;
  /** Keep at most this many chunks / windows (default all). */
  chunks?: number;
  /** BOS id (null: none). */
  bos: number | null;
  /** Whether the model's tokenizer adds BOS (llama protocol; windows always starts with BOS). */
  addBos: boolean;
}

export interface ProtocolPlan {
  protocol: Protocol;
  ctx: number;
  sequences: EvalSequence[];
  /** Chunks / windows the text holds before --chunks. */
  available: number;
  /** Tokens the protocol tokenized (llama: with the leading BOS). */
  tokens: number;
  scoredTokens: number;
}

/** Tokens llama-perplexity scores: n_chunk · (n_ctx − 1 − floor(n_ctx/2)), n_chunk = min(chunks, floor(tokens/n_ctx)). */
export function llamaScoredTokens(tokens: number, nCtx: number, chunks?: number): number {
  const max = Math.floor(tokens / nCtx);
  const n = chunks === undefined ? max : Math.min(chunks, max);
  return n * (nCtx - 1 - Math.floor(nCtx / 2));
}

/** Cuts the text's ids (no BOS) into model inputs by `opts.protocol`; see the file comment. */
export function planProtocol(textIds: readonly number[], opts: ProtocolOptions): ProtocolPlan {
  const { protocol, ctx, chunks } = opts;
  if (!Number.isInteger(ctx) || ctx < 1) throw new DeepcastError(`--ctx must be a positive integer, got ${ctx}`);
  if (chunks !== undefined && (!Number.isInteger(chunks) || chunks < 1)) throw new DeepcastError(`--chunks must be a positive integer, got ${chunks}`);
  if (protocol === "windows") {
    if (opts.bos === null) throw new DeepcastError("the windows protocol starts every window with BOS, and this model has no BOS token");
    if (textIds.length === 0) throw new DeepcastError("the text has no tokens");
    const all = perplexityWindows(textIds, ctx, opts.bos);
    const kept = chunks === undefined ? all : all.slice(0, chunks);
    const sequences = kept.map((w) => ({ input: w.input, first: 0, targets: w.targets }));
    return { protocol, ctx, sequences, available: all.length, tokens: textIds.length, scoredTokens: sequences.reduce((s, q) => s + q.targets.length, 0) };
  }
  if (protocol !== "llama") throw new DeepcastError(`unknown protocol ${JSON.stringify(protocol)} (llama or windows)`);
  if (ctx < 4) throw new DeepcastError(`--ctx ${ctx} is too small for the llama protocol (it scores positions ctx/2 … ctx-2)`);
  const addBos = opts.addBos && opts.bos !== null;
  const tokens = addBos ? [opts.bos!, ...textIds] : [...textIds];
  if (tokens.length < 2 * ctx) {
    throw new DeepcastError(`the llama protocol needs at least ${2 * ctx} tokens for a context of ${ctx} (as llama-perplexity); the text tokenizes to only ${tokens.length}: use a longer text or a smaller --ctx`);
  }
  const available = Math.floor(tokens.length / ctx);
  const n = chunks === undefined ? available : Math.min(chunks, available);
  const first = Math.floor(ctx / 2);
  const sequences: EvalSequence[] = [];
  for (let k = 0; k < n; k++) {
    const input = tokens.slice(k * ctx, (k + 1) * ctx);
    if (addBos) input[0] = opts.bos!;
    sequences.push({ input, first, targets: tokens.slice(k * ctx + first + 1, (k + 1) * ctx) });
  }
  return { protocol, ctx, sequences, available, tokens: tokens.length, scoredTokens: n * (ctx - 1 - first) };
}

/**
 * Sequences per forward pass when not given: as many as keep the float32 logits of one batch (of
 * both models with a reference) within about 2 GiB, at most 64. Every forward pass streams all the
 * weights, so bigger batches mean fewer passes over a large model.
 */
export function defaultBatchSequences(ctx: number, vocab: number, withReference: boolean): number {
  const perSequence = ctx * vocab * 4 * (withReference ? 2 : 1);
  return Math.max(1, Math.min(64, Math.floor((2 * 2 ** 30) / perSequence)));
}

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
interface RowFacts {
  max: number;
  argmax: number;
  /** log Σ exp(logit) */
  lse: number;
}

function rowFacts(logits: Float32Array, off: number, vocab: number): RowFacts {
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

/** Receives the candidate's logits of every position of every sequence, in order. */
export interface LogitSink {
  write(logits: Float32Array): Promise<void>;
}

export interface ValidateProgress {
  /** Sequences (chunks / windows) done and their total. */
  done: number;
  total: number;
  /** Tokens run through the candidate so far, and seconds since the start. */
  tokens: number;
  seconds: number;
  /** Running perplexity of the candidate and, with a reference, of the reference and the mean KLD. */
  ppl: number;
  pplBase?: number;
  meanKld?: number;
}

export interface ValidateOptions extends Omit<ForwardOptions, "onLayer"> {
  /** Sequences per forward pass (default 8). */
  batchSequences?: number;
  /** Called after each batch. */
  onProgress?: (p: ValidateProgress) => void;
  /** Called after each layer of each forward pass, with which model runs. */
  onLayer?: (model: "reference" | "candidate", layer: number, batch: number, batches: number) => void;
  /** Gets the candidate's logits (every position of every sequence, in order). */
  logits?: LogitSink;
}

export interface ValidateResult {
  sequences: number;
  scoredTokens: number;
  /** Tokens run through each model. */
  forwardTokens: number;
  forwardPasses: number;
  candidate: PerplexityStats;
  reference?: PerplexityStats;
  /** With a reference: llama.cpp's KL-divergence statistics. */
  kld?: KldSummary;
  candidateSeconds: number;
  referenceSeconds: number;
  seconds: number;
}

/**
 * Scores `candidate` (and with `reference`, compares it) on the sequences of a protocol plan. Per
 * batch of sequences: reference forward, candidate forward, then every scored position; the
 * batch's logits are dropped before the next batch.
 */
export async function validate(candidate: WeightSource, reference: WeightSource | null, sequences: readonly EvalSequence[], opts: ValidateOptions = {}): Promise<ValidateResult> {
  const vocab = candidate.config.vocabSize;
  if (reference && reference.config.vocabSize !== vocab) {
    throw new DeepcastError(`the reference's vocabulary (${reference.config.vocabSize}, ${reference.description}) differs from the candidate's (${vocab}, ${candidate.description})`);
  }
  for (const [b, s] of sequences.entries()) {
    if (s.first < 0 || s.first + s.targets.length > s.input.length) throw new RangeError(`sequence ${b}: scored positions past its input`);
  }
  const per = Math.max(1, Math.floor(opts.batchSequences ?? 8));
  const batches = Math.ceil(sequences.length / per);
  // Without a logits dump or a routing observer, only the scored positions' logits are made.
  const scoredOnly = !opts.logits && !opts.onRouting;
  const fwd = (model: "reference" | "candidate", batch: number, seqs: readonly EvalSequence[]): ForwardOptions => ({
    threads: opts.threads,
    ops: opts.ops,
    onRouting: opts.onRouting,
    onLayer: opts.onLayer ? (l) => opts.onLayer!(model, l, batch, batches) : undefined,
    ...(scoredOnly ? { logitsFrom: seqs.map((q) => q.first) } : {}),
  });
  const started = performance.now();
  const s = new Sums();
  const candSeqNll: number[] = [];
  const refSeqNll: number[] = [];
  const total = sequences.reduce((n, q) => n + q.targets.length, 0);
  const kldValues = reference ? new Float64Array(total) : new Float64Array(0);
  const pDiffValues = reference ? new Float64Array(total) : new Float64Array(0);
  let candidateSeconds = 0;
  let referenceSeconds = 0;
  let forwardTokens = 0;

  for (let bi = 0; bi < batches; bi++) {
    const batch = sequences.slice(bi * per, (bi + 1) * per);
    const inputs = batch.map((q) => q.input);
    let ref: Awaited<ReturnType<typeof forward>> | null = null;
    if (reference) {
      const t0 = performance.now();
      ref = await forward(reference, inputs, fwd("reference", bi, batch));
      referenceSeconds += (performance.now() - t0) / 1000;
    }
    const t0 = performance.now();
    const cand = await forward(candidate, inputs, fwd("candidate", bi, batch));
    candidateSeconds += (performance.now() - t0) / 1000;
    forwardTokens += inputs.reduce((n, x) => n + x.length, 0);

    for (let k = 0; k < batch.length; k++) {
      const q = batch[k]!;
      let seqNll = 0;
      let seqNllBase = 0;
      for (let i = 0; i < q.targets.length; i++) {
        const t = q.targets[i]!;
        const off = (cand.offsets[k]! + (scoredOnly ? 0 : q.first) + i) * vocab;
        const c = rowFacts(cand.logits, off, vocab);
        const nll = c.lse - cand.logits[off + t]!;
        seqNll += nll;
        s.nll += nll;
        s.nll2 += nll * nll;
        if (ref) {
          const r = rowFacts(ref.logits, off, vocab);
          const nllBase = r.lse - ref.logits[off + t]!;
          seqNllBase += nllBase;
          s.nllBase += nllBase;
          s.nllBase2 += nllBase * nllBase;
          s.nllNllBase += nll * nllBase;
          const kld = rowKld(ref.logits, off, r, cand.logits, off, c, vocab);
          s.kld += kld;
          s.kld2 += kld * kld;
          const pDiff = Math.exp(-nll) - Math.exp(-nllBase);
          s.pDiff += pDiff;
          s.pDiff2 += pDiff * pDiff;
          s.pDiff4 += pDiff ** 4;
          if (c.argmax === r.argmax) s.sameTop++;
          kldValues[s.count] = kld;
          pDiffValues[s.count] = pDiff;
        }
        s.count++;
      }
      candSeqNll.push(seqNll);
      if (ref) refSeqNll.push(seqNllBase);
    }
    ref = null;
    if (opts.logits) await opts.logits.write(cand.logits);
    opts.onProgress?.({
      done: Math.min((bi + 1) * per, sequences.length),
      total: sequences.length,
      tokens: forwardTokens,
      seconds: (performance.now() - started) / 1000,
      ppl: Math.exp(s.nll / s.count),
      ...(reference ? { pplBase: Math.exp(s.nllBase / s.count), meanKld: s.kld / s.count } : {}),
    });
  }
  return {
    sequences: sequences.length,
    scoredTokens: s.count,
    forwardTokens,
    forwardPasses: batches,
    candidate: pplStats(s.nll, s.nll2, s.count, candSeqNll),
    ...(reference ? { reference: pplStats(s.nllBase, s.nllBase2, s.count, refSeqNll), kld: summarize(s, kldValues, pDiffValues) } : {}),
    candidateSeconds,
    referenceSeconds,
    seconds: (performance.now() - started) / 1000,
  };
}

/**
 * Writes float32 logits little-endian to a temporary file beside `file`, renamed to `file` by
 * `commit` (so `file` is only ever complete); `abort` removes the temporary file.
 */
export class LogitsFileWriter implements LogitSink {
  private constructor(
    readonly file: string,
    readonly tempFile: string,
    private fh: FileHandle | null,
  ) {}

  bytes = 0;
  private committed = false;

  static async create(file: string): Promise<LogitsFileWriter> {
    const temp = join(dirname(file), `.${basename(file)}.${randomBytes(4).toString("hex")}.tmp`);
    let fh: FileHandle;
    try {
      fh = await open(temp, "wx");
    } catch (e) {
      throw new DeepcastError(`cannot write the logits file: ${(e as Error).message}`, { file: temp });
    }
    return new LogitsFileWriter(file, temp, fh);
  }

  async write(logits: Float32Array): Promise<void> {
    if (!this.fh) throw new Error("logits file already closed");
    let bytes = new Uint8Array(logits.buffer, logits.byteOffset, logits.byteLength);
    if (endianness() === "BE") {
      const swapped = new Uint8Array(bytes.length);
      for (let i = 0; i < bytes.length; i += 4) {
        swapped[i] = bytes[i + 3]!;
        swapped[i + 1] = bytes[i + 2]!;
        swapped[i + 2] = bytes[i + 1]!;
        swapped[i + 3] = bytes[i]!;
      }
      bytes = swapped;
    }
    try {
      let done = 0;
      while (done < bytes.length) {
        const { bytesWritten } = await this.fh.write(bytes, done, bytes.length - done);
        done += bytesWritten;
      }
    } catch (e) {
      throw new DeepcastError(`cannot write the logits file: ${(e as Error).message}`, { file: this.tempFile });
    }
    this.bytes += bytes.length;
  }

  async commit(): Promise<void> {
    const fh = this.fh;
    if (!fh) return;
    this.fh = null;
    this.committed = true;
    try {
      await fh.sync();
      await fh.close();
      await rename(this.tempFile, this.file);
    } catch (e) {
      await unlink(this.tempFile).catch(() => undefined);
      throw new DeepcastError(`cannot write the logits file: ${(e as Error).message}`, { file: this.file });
    }
  }

  /** Removes the temporary file (nothing after a successful commit). */
  async abort(): Promise<void> {
    if (this.committed) return;
    const fh = this.fh;
    this.fh = null;
    await fh?.close().catch(() => undefined);
    await unlink(this.tempFile).catch(() => undefined);
  }
}

/** llama-perplexity's summary lines for a KLD run (the same labels and printf formats). */
export function formatKldSummary(k: KldSummary): string {
  const f = (v: number, w: number, d: number) => (Number.isFinite(v) ? v.toFixed(d).padStart(w) : String(v).padStart(w));
  const pm = (e: Estimate, w: number, d: number) => `${f(e.value, w, d)} ± ${f(e.uncertainty, w, d)}`;
  const lines = [
    "====== Perplexity statistics ======",
    `Mean PPL(Q)                   : ${pm(k.meanPplQ, 10, 6)}`,
    `Mean PPL(base)                : ${pm(k.meanPplBase, 10, 6)}`,
    `Cor(ln(PPL(Q)), ln(PPL(base))): ${f(k.corLnPplPercent, 6, 2)}%`,
    `Mean ln(PPL(Q)/PPL(base))     : ${pm(k.meanLnPplRatio, 10, 6)}`,
    `Mean PPL(Q)/PPL(base)         : ${pm(k.meanPplRatio, 10, 6)}`,
    `Mean PPL(Q)-PPL(base)         : ${pm(k.meanPplDiff, 10, 6)}`,
    "",
    "====== KL divergence statistics ======",
    `Mean    KLD: ${pm(k.meanKld, 10, 6)}`,
  ];
  const label = (p: string) => (p === "maximum" ? "Maximum" : p === "minimum" ? "Minimum" : p === "median" ? "Median" : `${p.padStart(4)}%`).padEnd(8);
  for (const p of KLD_POINTS) lines.push(`${label(p)}KLD: ${f(k.kld[p], 10, 6)}`);
  lines.push("", "====== Token probability statistics ======", `Mean    Δp: ${f(k.meanDeltaPPercent.value, 6, 3)} ± ${f(k.meanDeltaPPercent.uncertainty, 5, 3)} %`);
  for (const p of DELTA_P_POINTS) lines.push(`${label(p)}Δp: ${f(k.deltaPPercent[p], 6, 3)}%`);
  lines.push("", `RMS Δp    : ${f(k.rmsDeltaPPercent.value, 6, 3)} ± ${f(k.rmsDeltaPPercent.uncertainty, 5, 3)} %`);
  lines.push(`Same top p: ${f(k.sameTopPPercent.value, 6, 3)} ± ${f(k.sameTopPPercent.uncertainty, 5, 3)} %`);
  return lines.join("\n");
}
