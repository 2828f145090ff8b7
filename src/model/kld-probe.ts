/**
 * Mean KL divergence of many candidate models against one reference on a fixed set of sequences,
 * for searches that score allocations by measurement (to-gguf --target-measure): the reference runs
 * once and its log-probabilities of the scored positions are kept (positions x vocab float32); each
 * candidate then costs one layer-streamed forward pass that makes only the scored positions' logits.
 * KLD = sum_i p_ref,i (log p_ref,i - log p_cand,i) per scored position, in nats, summed in float64, as
 * ./kld-stats.ts computes it for `validate`.
 */
import { DeepcastError } from "../errors.js";
import type { EvalSequence } from "./eval-protocol.js";
import { forward } from "./forward.js";
import type { ForwardOps } from "./ops.js";
import type { WeightSource } from "./weights.js";

export interface KldProbeOptions {
  threads?: number;
  ops?: ForwardOps;
  /** Sequences per forward pass (default 16). */
  batchSequences?: number;
}

/** log-softmax of logits row `off` into `dst` (float32), in float64 arithmetic. */
function logSoftmax(logits: Float32Array, off: number, vocab: number, dst: Float32Array, at: number): void {
  let max = -Infinity;
  for (let j = 0; j < vocab; j++) max = Math.max(max, logits[off + j]!);
  let sum = 0;
  for (let j = 0; j < vocab; j++) sum += Math.exp(logits[off + j]! - max);
  const lse = max + Math.log(sum);
  for (let j = 0; j < vocab; j++) dst[at + j] = logits[off + j]! - lse;
}

export class KldProbe {
  private constructor(
    private readonly sequences: readonly EvalSequence[],
    private readonly refLogp: Float32Array,
    private readonly vocab: number,
    private readonly opts: KldProbeOptions,
    /** Seconds the reference pass took. */
    readonly referenceSeconds: number,
  ) {}

  /** Scored positions per candidate. */
  get positions(): number {
    return this.refLogp.length / this.vocab;
  }

  /** Runs the reference once over `sequences` and keeps its log-probabilities of the scored positions. */
  static async create(reference: WeightSource, sequences: readonly EvalSequence[], opts: KldProbeOptions = {}): Promise<KldProbe> {
    if (sequences.length === 0) throw new DeepcastError("no sequence to measure the KL divergence on");
    const vocab = reference.config.vocabSize;
    const positions = sequences.reduce((n, q) => n + q.targets.length, 0);
    const refLogp = new Float32Array(positions * vocab);
    const t0 = performance.now();
    let at = 0;
    await KldProbe.passes(reference, sequences, opts, (logits, off) => {
      logSoftmax(logits, off, vocab, refLogp, at);
      at += vocab;
    });
    return new KldProbe(sequences, refLogp, vocab, opts, (performance.now() - t0) / 1000);
  }

  /** Runs `model` over the sequences in batches, handing each scored position's logits row (in order) to `row`. */
  private static async passes(model: WeightSource, sequences: readonly EvalSequence[], opts: KldProbeOptions, row: (logits: Float32Array, off: number) => void): Promise<void> {
    const vocab = model.config.vocabSize;
    const per = Math.max(1, Math.floor(opts.batchSequences ?? 16));
    for (let b = 0; b < sequences.length; b += per) {
      const batch = sequences.slice(b, b + per);
      const r = await forward(model, batch.map((q) => q.input), { threads: opts.threads, ops: opts.ops, logitsFrom: batch.map((q) => q.first) });
      for (const [k, q] of batch.entries()) {
        for (let i = 0; i < q.targets.length; i++) row(r.logits, (r.offsets[k]! + i) * vocab);
      }
    }
  }

  /** Mean KLD (nats per scored position) of `candidate` against the reference. */
  async meanKld(candidate: WeightSource): Promise<number> {
    if (candidate.config.vocabSize !== this.vocab) {
      throw new DeepcastError(`the candidate's vocabulary (${candidate.config.vocabSize}) differs from the reference's (${this.vocab})`, { file: candidate.description });
    }
    const vocab = this.vocab;
    const ref = this.refLogp;
    const logq = new Float32Array(vocab);
    let total = 0;
    let at = 0;
    await KldProbe.passes(candidate, this.sequences, this.opts, (logits, off) => {
      logSoftmax(logits, off, vocab, logq, 0);
      let kld = 0;
      for (let j = 0; j < vocab; j++) {
        const lp = ref[at + j]!;
        kld += Math.exp(lp) * (lp - logq[j]!);
      }
      total += Math.max(0, kld);
      at += vocab;
    });
    return total / this.positions;
  }
}
