/**
 * Perplexity with fixed windows, the protocol of the tiny-dsv3 golden figures (ppl.json): the text's
 * ids (no special tokens) are cut into windows ids[i:i+W] for i = 0, W, 2W, ...; a window w of
 * length n is run as [BOS] + w[0:n-1] from position 0 and all n positions are scored (position p
 * predicts w[p]), so every text token is scored exactly once. NLL = -log_softmax(float32 logits)
 * [target], summed in float64; ppl = exp(sum NLL / tokens).
 */
import { forward, type ForwardOptions } from "./forward.js";
import type { WeightSource } from "./weights.js";

export interface PerplexityWindow {
  /** Model input: [BOS] + w[0:n-1]. */
  input: number[];
  /** Targets: w (position p predicts w[p]). */
  targets: number[];
}

export function perplexityWindows(ids: readonly number[], windowLen: number, bos: number): PerplexityWindow[] {
  if (!Number.isInteger(windowLen) || windowLen < 1) throw new RangeError(`window length must be a positive integer, got ${windowLen}`);
  const out: PerplexityWindow[] = [];
  for (let i = 0; i < ids.length; i += windowLen) {
    const w = ids.slice(i, i + windowLen);
    out.push({ input: [bos, ...w.slice(0, w.length - 1)], targets: w });
  }
  return out;
}

/** -log_softmax(logits)[target] of one row, in float64. */
export function tokenNll(logits: Float32Array, offset: number, vocab: number, target: number): number {
  let mx = -Infinity;
  for (let j = 0; j < vocab; j++) mx = Math.max(mx, logits[offset + j]!);
  let sum = 0;
  for (let j = 0; j < vocab; j++) sum += Math.exp(logits[offset + j]! - mx);
  return -(logits[offset + target]! - mx - Math.log(sum));
}

export interface PerplexityOptions extends ForwardOptions {
  /** Window length in tokens (default 256). */
  windowLen?: number;
  /** BOS id (default: the config's bos_token_id). */
  bos?: number;
  /** Windows per forward call (default 8): bounds memory to that many windows of activations and logits. */
  batchWindows?: number;
  /** Only these windows (indices into the window list); default all. */
  windows?: readonly number[];
  /** Called after each forward batch with windows done so far and their total. */
  onProgress?: (done: number, total: number) => void;
}

export interface PerplexityResult {
  ppl: number;
  /** Sum of NLL over all scored tokens (nats, float64). */
  nll: number;
  tokens: number;
  /** Per scored window: its NLL sum. */
  windowNll: number[];
  /** Indices of the windows scored. */
  windows: number[];
  /** Seconds spent in forward passes, and tokens run through them. */
  forwardSeconds: number;
  forwardTokens: number;
}

export async function perplexity(src: WeightSource, ids: readonly number[], opts: PerplexityOptions = {}): Promise<PerplexityResult> {
  const all = perplexityWindows(ids, opts.windowLen ?? 256, opts.bos ?? src.config.bosTokenId);
  const chosen = opts.windows ? [...opts.windows] : all.map((_, i) => i);
  for (const i of chosen) if (!all[i]) throw new RangeError(`window ${i} does not exist (${all.length} windows)`);
  const per = Math.max(1, opts.batchWindows ?? 8);
  const windowNll: number[] = [];
  let nll = 0;
  let tokens = 0;
  let forwardSeconds = 0;
  let forwardTokens = 0;
  for (let b = 0; b < chosen.length; b += per) {
    const batch = chosen.slice(b, b + per).map((i) => all[i]!);
    const t0 = performance.now();
    const r = await forward(src, batch.map((w) => w.input), opts);
    forwardSeconds += (performance.now() - t0) / 1000;
    forwardTokens += r.offsets[batch.length]!;
    batch.forEach((w, k) => {
      let s = 0;
      for (let p = 0; p < w.targets.length; p++) s += tokenNll(r.logits, (r.offsets[k]! + p) * r.vocab, r.vocab, w.targets[p]!);
      windowNll.push(s);
      nll += s;
      tokens += w.targets.length;
    });
    opts.onProgress?.(Math.min(b + per, chosen.length), chosen.length);
  }
  return { ppl: Math.exp(nll / tokens), nll, tokens, windowNll, windows: chosen, forwardSeconds, forwardTokens };
}
