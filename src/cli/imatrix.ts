import type { Argv, ArgumentsCamelCase } from "yargs";
import { readFile, stat } from "node:fs/promises";
import { totalmem } from "node:os";
import { DeepcastError } from "../errors.js";
import { writeImatrix, type ImatrixFormat } from "../io/imatrix-write.js";
import { planImatrixChunks, planImatrixMemory, runImatrix } from "../model/imatrix-run.js";
import { openWeights } from "../model/open-weights.js";
import { findTokenizer } from "../model/open-tokenizer.js";
import { hasTokenizer, readTokenIds, type TextTokenizer } from "../model/tokenize.js";
import type { WeightSource } from "../model/weights.js";
import { fmtBytes } from "../units.js";
import type { ProgressView } from "./progress.js";
import type { BackendKind } from "../model/backend.js";
import { deviceFacts, deviceOps, withDeviceOption } from "./device.js";
import { printResult, runFacts, selectKernels, withCommonOptions, withProgress } from "./common.js";

export const command = "imatrix <model>";
export const describe = "Importance matrix (llama-imatrix's statistics) from the layer-streamed forward pass, in bounded memory";

export const EPILOGUE = [
  "The text is cut as llama-imatrix cuts it: [BOS] + the text's tokens, at least 2*ctx of them, chunks of --ctx tokens " +
    "(each run from position 0 with its first token replaced by BOS), min(--chunks, tokens/ctx) chunks. For every weight " +
    "matrix that multiplies activations (GGUF names: attention projections incl. attn_k_b/attn_v_b, dense FFN, router, " +
    "shared experts, each routed expert separately) the sum of squared inputs per column and the number of tokens that " +
    "reached it are collected; output.weight only with --process-output.",
  "Memory: the model is read one layer at a time; chunks go through it in batches, each batch reading every weight " +
    "once. --memory sets the budget that picks the batch (default 75% of RAM); all chunks share one pass when they fit.",
  "Output: llama.cpp's GGUF imatrix (default) or the legacy .dat format (--output-format dat), written atomically; " +
    "llama-quantize --imatrix and deepcast to-gguf --imatrix read both.",
].join("\n\n");

export function builder(y: Argv) {
  return withCommonOptions(withDeviceOption(
    y
      .positional("model", { type: "string", demandOption: true, describe: "HF checkpoint folder or repo id (FP8 or BF16), .gguf file, or demo-shard folder" })
      .option("text", { alias: "f", type: "string", describe: "Calibration text file (UTF-8)" })
      .option("tokens", { type: "string", describe: "The text's token ids instead of --text: JSON array, or object with an \"ids\" array (no BOS)" })
      .option("output", { alias: "o", type: "string", demandOption: true, describe: "Output imatrix file" })
      .option("output-format", { choices: ["gguf", "dat"] as const, default: "gguf" as const, describe: "gguf (llama.cpp's current format) or dat (legacy)" })
      .option("ctx", { alias: "c", type: "number", default: 512, describe: "Chunk length in tokens" })
      .option("chunks", { type: "number", describe: "Use at most this many chunks" })
      .option("tokenizer", { type: "string", describe: "Folder with tokenizer.json (+ tokenizer_config.json); default: beside the model" })
      .option("process-output", { type: "boolean", default: false, describe: "Collect output.weight too (as llama-imatrix --process-output)" })
      .option("ppl", { type: "boolean", default: true, describe: "Compute the perplexity on the way (--no-ppl skips the head)" })
      .option("memory", { type: "string", describe: "Memory budget that picks the chunks per pass, e.g. 64G, 512M (default 75% of RAM)" })
      .conflicts("text", "tokens"),
  )).epilogue(EPILOGUE);
}

type Args = ArgumentsCamelCase<ReturnType<typeof builder> extends Argv<infer T> ? T : never>;

/** "64G", "1.5GiB", "512M", "1000000" -> bytes (K/M/G/T powers of 1024). */
export function parseMemory(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(s);
  if (!m) throw new DeepcastError(`--memory ${JSON.stringify(s)}: expected a size such as 64G, 512M or a number of bytes`, { code: "USAGE" });
  const v = Number(m[1]) * 1024 ** " kmgt".indexOf((m[2] || " ").toLowerCase());
  if (!(v > 0)) throw new DeepcastError(`--memory must be positive, got ${s}`, { code: "USAGE" });
  return Math.floor(v);
}

/** The text's token ids (no BOS) and the BOS convention, checked against the model. */
export async function imatrixTokens(model: WeightSource, opts: { text?: string; tokens?: string; tokenizer?: string; modelPath: string; revision?: string }):
  Promise<{ ids: number[]; bos: number | null; addBos: boolean; tokenizer: TextTokenizer | null; input: string }> {
  const cfg = model.config;
  if (opts.tokenizer && !(await hasTokenizer(opts.tokenizer))) throw new DeepcastError("--tokenizer: no tokenizer.json in this folder", { file: opts.tokenizer, code: "NOT_FOUND" });
  // a tokenizer.json (beside the model, --tokenizer, the Hub repo's) wins; else a GGUF's own metadata
  const tokenizer = await findTokenizer([opts.tokenizer, opts.modelPath], { fallbackBos: cfg.bosTokenId, ...(opts.revision !== undefined ? { revision: opts.revision } : {}) });
  let ids: number[];
  const input = (opts.tokens ?? opts.text)!;
  if (opts.tokens) {
    ids = await readTokenIds(opts.tokens);
  } else {
    if (!tokenizer) {
      throw new DeepcastError("no tokenizer.json beside the model (and not a GGUF, whose metadata carries one): give --tokenizer DIR (the original checkpoint folder) or token ids with --tokens FILE.json",
        { file: opts.modelPath, code: "NOT_FOUND" });
    }
    let text: string;
    try {
      text = await readFile(opts.text!, "utf8");
    } catch (e) {
      throw new DeepcastError(`cannot read the text: ${(e as Error).message}`, { file: opts.text, code: "NOT_FOUND" });
    }
    ids = tokenizer.encode(text);
  }
  const bad = ids.findIndex((id) => id >= cfg.vocabSize);
  if (bad >= 0) {
    throw new DeepcastError(`tokenizer mismatch: token ${bad} of the text is id ${ids[bad]}, outside the model's vocabulary of ${cfg.vocabSize}` +
      (tokenizer ? ` (tokenizer ${tokenizer.description})` : ""), { file: input, code: "CONFIG_MISMATCH" });
  }
  const bos = tokenizer ? tokenizer.bosId : cfg.bosTokenId;
  const addBos = tokenizer ? tokenizer.addBos : true;
  if (addBos && bos !== cfg.bosTokenId) {
    throw new DeepcastError(`tokenizer mismatch: the tokenizer's BOS is id ${bos}, the model's bos_token_id is ${cfg.bosTokenId}`,
      { file: tokenizer?.description ?? input, code: "CONFIG_MISMATCH" });
  }
  return { ids, bos, addBos, tokenizer, input };
}

/** One importance-matrix computation, as `deepcast imatrix` and `to-gguf --calibration` run it. */
export interface ImatrixJob {
  model: string;
  text?: string;
  tokens?: string;
  tokenizer?: string;
  output: string;
  format: ImatrixFormat;
  ctx: number;
  chunks?: number;
  processOutput: boolean;
  ppl: boolean;
  /** Memory budget in bytes. */
  budget: number;
  threads: number;
  /** Where the matmuls run (--device; default cpu). */
  device?: BackendKind;
  revision?: string;
  force: boolean;
  dryRun: boolean;
}

export interface ImatrixJobResult {
  /** The plan (what --dry-run prints), and after a run the figures too. */
  report: Record<string, unknown>;
  /** One human line. */
  summary: string;
}

/** Opens the model, tokenizes, plans the passes, runs them and writes the file (progress on stderr). */
export async function makeImatrix(job: ImatrixJob): Promise<ImatrixJobResult> {
  const started = performance.now();
  if (!job.text && !job.tokens) throw new DeepcastError("give the calibration text with -f/--text FILE or its token ids with --tokens FILE.json", { code: "USAGE" });
  if (job.chunks !== undefined && (!Number.isInteger(job.chunks) || job.chunks < 1)) throw new DeepcastError(`--chunks must be a positive integer, got ${job.chunks}`, { code: "USAGE" });
  const exists = await stat(job.output).catch(() => null);
  if (exists?.isDirectory()) throw new DeepcastError("-o names a folder", { file: job.output, code: "NOT_A_FILE" });
  if (exists && !job.force && !job.dryRun) throw new DeepcastError("the output exists: use --force to overwrite it", { file: job.output, code: "OUTPUT_EXISTS" });

  return withProgress({ label: "imatrix", unit: "chunks", resumeHint: "nothing was written: rerun the same command to start over" },
    (progress) => imatrixWith(job, progress, started));
}

async function imatrixWith(job: ImatrixJob, progress: ProgressView, started: number): Promise<ImatrixJobResult> {
  const { threads, format, budget } = job;
  const out = job.output;
  const ops = deviceOps(job.device ?? "cpu", "imatrix");
  let model: WeightSource;
  try {
    model = await openWeights(job.model, { threads, revision: job.revision, onEvent: progress.onEvent });
  } catch (e) {
    if (e instanceof DeepcastError) throw e;
    throw new DeepcastError(`cannot open the model: ${(e as Error).message}`, { file: job.model }, { cause: e });
  }
  try {
    const cfg = model.config;
    const tok = await imatrixTokens(model, { text: job.text, tokens: job.tokens, tokenizer: job.tokenizer, modelPath: job.model, revision: job.revision });
    if (job.ctx > cfg.maxPositionEmbeddings) throw new DeepcastError(`--ctx ${job.ctx} is longer than the model's max_position_embeddings ${cfg.maxPositionEmbeddings}`, { file: model.description, code: "USAGE" });
    const plan = planImatrixChunks(tok.ids, { ctx: job.ctx, chunks: job.chunks, bos: tok.bos, addBos: tok.addBos, file: tok.input });
    const mem = planImatrixMemory(cfg, job.ctx, plan.sequences.length, budget, { processOutput: job.processOutput, ppl: job.ppl });
    const planInfo = {
      command: "imatrix",
      model: model.description,
      input: tok.input,
      tokenizer: tok.tokenizer?.description ?? null,
      output: out,
      outputFormat: format,
      ctx: job.ctx,
      chunks: plan.sequences.length,
      available: plan.available,
      textTokens: plan.tokens,
      memoryBudgetBytes: budget,
      chunksPerBatch: mem.chunksPerBatch,
      batches: mem.batches,
      estimatedPeakBytes: mem.estimatedPeakBytes,
      fixedBytes: mem.fixedBytes,
      perChunkBytes: mem.perChunkBytes,
    };
    const err = process.stderr;
    const batchLine = `${plan.sequences.length} chunks of ${job.ctx} (${plan.available} in the text) in ${mem.batches} pass(es) of up to ${mem.chunksPerBatch} chunks ` +
      `(memory budget ${fmtBytes(budget)}, estimated peak ${fmtBytes(mem.estimatedPeakBytes)})`;
    if (job.dryRun) return { report: planInfo, summary: `would compute the importance matrix over ${batchLine}; output ${out} (${format})` };
    if (mem.estimatedPeakBytes > budget) err.write(`imatrix: warning: one chunk per pass already needs about ${fmtBytes(mem.estimatedPeakBytes)}, over the --memory budget\n`);
    err.write(`imatrix: ${batchLine}\n`);
    const r = await runImatrix(model, plan, {
      ops,
      chunksPerBatch: mem.chunksPerBatch,
      threads,
      processOutput: job.processOutput,
      ppl: job.ppl,
      onEvent: progress.onEvent,
    });
    const data = {
      entries: new Map([...r.collector.stats].map(([n, e]) => [n, { sums: e.sums, counts: e.counts }])),
      datasets: [tok.input],
      chunkCount: r.chunkCount,
      chunkSize: r.chunkSize,
    };
    const bytes = await writeImatrix(out, data, format);
    let unrouted = 0;
    for (const e of r.collector.stats.values()) for (const c of e.counts) if (c === 0) unrouted++;
    const report = {
      ...planInfo,
      entries: data.entries.size,
      chunkCount: r.chunkCount,
      chunkSize: r.chunkSize,
      unroutedExperts: unrouted,
      bytes,
      ppl: r.ppl,
      forwardTokens: r.tokens,
      forwardSeconds: r.seconds,
      tokensPerSecond: r.tokens / Math.max(r.seconds, 1e-9),
      weightReads: r.weightReads,
      ...deviceFacts(ops),
    };
    const seconds = (performance.now() - started) / 1000;
    const summary = `imatrix: ${data.entries.size} entries over ${r.chunkCount} chunks of ${r.chunkSize} written to ${out} (${format}, ${fmtBytes(bytes)})` +
      (r.ppl !== null ? `; Final estimate: PPL = ${r.ppl.toFixed(4)}` : "") +
      (unrouted ? `; ${unrouted} expert matrices got no tokens (kept at zero)` : "") + `; done in ${seconds.toFixed(1)} s`;
    return { report, summary };
  } finally {
    await model.close();
  }
}

/** The memory budget of --memory, or 75% of RAM. */
export function memoryBudget(memory: string | undefined): number {
  return memory !== undefined ? parseMemory(memory) : Math.floor(0.75 * totalmem());
}

export async function handler(argv: Args): Promise<void> {
  const started = performance.now();
  const k = selectKernels(argv.simd);
  const threads = Math.max(1, Math.floor(argv.threads));
  const { report, summary } = await makeImatrix({
    model: argv.model, text: argv.text, tokens: argv.tokens, tokenizer: argv.tokenizer, output: argv.output,
    format: argv.outputFormat as ImatrixFormat, ctx: argv.ctx, chunks: argv.chunks, processOutput: argv.processOutput, ppl: argv.ppl,
    budget: memoryBudget(argv.memory), threads, device: argv.device, revision: argv.revision, force: argv.force, dryRun: argv.dryRun,
  });
  printResult(argv.json, argv.dryRun ? report : { ...report, ...runFacts(started, k, threads) }, summary);
}
