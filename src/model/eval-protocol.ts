/**
 * Evaluation protocols: how a text's token ids are cut into model inputs (`EvalSequence`), each with
 * the positions that are scored.
 *
 *  - `llama` (default) = llama-perplexity's default protocol: tokens = [BOS] + text ids (BOS when the
 *    tokenizer adds one); at least 2·n_ctx tokens; n_chunk = min(--chunks, floor(tokens / n_ctx));
 *    chunk k = tokens[k·n_ctx, (k+1)·n_ctx) run from position 0 with its first token replaced by BOS;
 *    positions first = floor(n_ctx/2) … n_ctx−2 are scored, position p predicting chunk token p+1:
 *    n_ctx − 1 − floor(n_ctx/2) tokens per chunk (255 for 512). The rest of the text is ignored.
 *  - `windows` = the tiny-dsv3 fixture's protocol (ppl.json): windows w = ids[i, i+W) for
 *    i = 0, W, 2W, … (the last one shorter), input [BOS] + w[0 … n−2], every position scored
 *    (position p predicts w[p]), so every text token is scored once. `--chunks` keeps the first N.
 */
import { DeepcastError } from "../errors.js";
import { perplexityWindows } from "./perplexity.js";

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

/** Cuts the text's ids (no BOS) into model inputs by `opts.protocol`; see the module comment. */
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
