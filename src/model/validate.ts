/**
 * Validation of a converted model: perplexity on a text, and with a reference model, the
 * KL-divergence statistics of llama.cpp's `llama-perplexity --kl-divergence`, computed without a
 * logit file: reference and candidate run side by side on the same token windows (./eval-protocol.ts),
 * a batch of windows at a time (reference forward, then candidate forward, score, drop), so only one
 * batch's logits of each model are ever held. The statistics are ./kld-stats.ts.
 */
import { DeepcastError } from "../errors.js";
import { progressMeter, type OnEvent } from "../events.js";
import type { EvalSequence } from "./eval-protocol.js";
import { forward, type ForwardOptions } from "./forward.js";
import { Scores, type KldSummary, type PerplexityStats } from "./kld-stats.js";
import type { WeightSource } from "./weights.js";

/**
 * Sequences per forward pass when not given: as many as keep the float32 logits of one batch (of
 * both models with a reference) within about 2 GiB, at most 64. Every forward pass streams all the
 * weights, so bigger batches mean fewer passes over a large model.
 */
export function defaultBatchSequences(ctx: number, vocab: number, withReference: boolean): number {
  const perSequence = ctx * vocab * 4 * (withReference ? 2 : 1);
  return Math.max(1, Math.min(64, Math.floor((2 * 2 ** 30) / perSequence)));
}

/** Receives the candidate's logits of every position of every sequence, in order. */
export interface LogitSink {
  write(logits: Float32Array): Promise<void>;
}

export interface ValidateOptions extends Omit<ForwardOptions, "onLayer"> {
  /** Progress: start, layer (each layer of each forward pass), batch (each batch scored), done. */
  onEvent?: OnEvent;
  /** Sequences per forward pass (default 8). */
  batchSequences?: number;
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
  // progress: tokens through each model, a forward pass's batch counted layer by layer (the head as one more)
  let passed = 0;
  const fwd = (model: "reference" | "candidate", batch: number, seqs: readonly EvalSequence[]): ForwardOptions => {
    const layers = (model === "candidate" ? candidate : reference!).config.nLayers;
    const tokens = seqs.reduce((n, q) => n + q.input.length, 0);
    return {
      threads: opts.threads,
      ops: opts.ops,
      onRouting: opts.onRouting,
      // DeepSeek-V4 as llama.cpp runs it (no FP8/FP4 activation simulation; spec §4.4): with model.py's
      // QAT on, its rounding steps amplify a near-lossless candidate's differences (tiny-dsv4's default
      // GGUF vs the FP8 checkpoint: mean KLD 0.074 with QAT, 0.0039 without)
      v4: { qat: false },
      onLayer: opts.onEvent
        ? (layer) => {
          emit({ kind: "layer", model, layer, layers, batch, batches });
          meter.set(passed + (tokens * (layer + 1)) / (layers + 1));
          if (layer === layers) passed += tokens;
        }
        : undefined,
      ...(scoredOnly ? { logitsFrom: seqs.map((q) => q.first) } : {}),
    };
  };
  const emit: OnEvent = opts.onEvent ?? (() => undefined);
  const started = performance.now();
  emit({ kind: "start", command: "validate", total: sequences.length, unit: "sequences" });
  const models = reference ? 2 : 1;
  const meter = progressMeter(emit, "validate", "tokens", models * sequences.reduce((n, q) => n + q.input.length, 0));
  const total = sequences.reduce((n, q) => n + q.targets.length, 0);
  const scores = new Scores(total, reference !== null);
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
      for (let i = 0; i < q.targets.length; i++) {
        scores.add(cand.logits, ref?.logits ?? null, (cand.offsets[k]! + (scoredOnly ? 0 : q.first) + i) * vocab, vocab, q.targets[i]!);
      }
      scores.endSequence();
    }
    ref = null;
    if (opts.logits) await opts.logits.write(cand.logits);
    emit({
      kind: "batch",
      done: Math.min((bi + 1) * per, sequences.length),
      total: sequences.length,
      tokens: forwardTokens,
      seconds: (performance.now() - started) / 1000,
      ...scores.running(),
    });
  }
  emit({ kind: "done", command: "validate", seconds: (performance.now() - started) / 1000 });
  return {
    sequences: sequences.length,
    scoredTokens: scores.count,
    forwardTokens,
    forwardPasses: batches,
    candidate: scores.candidate(),
    ...(reference ? { reference: scores.reference(), kld: scores.kld() } : {}),
    candidateSeconds,
    referenceSeconds,
    seconds: (performance.now() - started) / 1000,
  };
}
