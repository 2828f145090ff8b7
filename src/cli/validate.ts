import type { Argv, ArgumentsCamelCase } from "yargs";
import { unlinkSync } from "node:fs";
import { lstat, readFile, stat } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { refuseOutputInInput } from "../convert/run-state.js";
import { freeBytes } from "../io/write.js";
import { DeepcastError, usageError } from "../errors.js";
import { findTokenizer } from "../model/open-tokenizer.js";
import { hasTokenizer, readTokenIds, type TextTokenizer } from "../model/tokenize.js";
import { LogitsFileWriter } from "../io/logits-file.js";
import { DEFAULT_CTX, planProtocol, PROTOCOLS, type Protocol } from "../model/eval-protocol.js";
import { defaultBatchSequences, validate } from "../model/validate.js";
import { openWeights } from "../model/open-weights.js";
import type { WeightSource } from "../model/weights.js";
import { fmtBytes } from "../units.js";
import { printDryRun, printResult, runFacts, selectKernels, withCommonOptions } from "./common.js";
import { formatKldSummary } from "./kld-format.js";
import { progressView } from "./progress.js";
import { deviceFacts, deviceOps, withDeviceOption } from "./device.js";

export const command = "validate [candidate]";
export const describe = "Perplexity of a converted model on a text, and with --reference, llama.cpp's KL-divergence statistics against the original";

export const EPILOGUE = [
  "Protocols (--protocol):",
  "  llama (default): llama-perplexity's own protocol, so the figures compare with llama.cpp's. The text is tokenized " +
    "with BOS in front (DeepSeek-V3 adds BOS id 0); it needs at least 2*ctx tokens; chunks = min(--chunks, tokens / ctx) " +
    "non-overlapping chunks of --ctx tokens (default 512, the rest of the text is ignored); each chunk runs from position 0 " +
    "with its first token replaced by BOS, and only its second half is scored: positions ctx/2 .. ctx-2, each predicting " +
    "the next token, i.e. ctx-1-ctx/2 tokens per chunk (255 for 512).",
  "  windows: the tiny-dsv3 fixture's protocol (ppl.json): the text's ids without BOS cut into non-overlapping windows " +
    "of --ctx tokens (default 256; the last one shorter); a window w runs as [BOS] + w[0..n-2] and every position is " +
    "scored (position p predicts w[p]), so every text token is scored once. --chunks keeps the first N windows.",
  "NLL per scored token = logsumexp(logits) - logits[target] over the float32 logits (float64 sums); PPL = exp(mean NLL), " +
    "with llama-perplexity's +/- estimate.",
  "With --reference: both models run on the same windows, batch by batch (reference forward, then candidate forward, " +
    "then the batch is scored and dropped: no logit file, one batch of logits in memory). Reported with llama.cpp's " +
    "names: Mean PPL(Q) (candidate), Mean PPL(base) (reference), their ratio/difference, Mean KLD = KL(P_ref || P_cand) " +
    "per scored token in nats with percentiles, Δp = p_cand(correct token) - p_ref(correct token) (mean, percentiles, " +
    "RMS, in %), Same top p = % of positions whose argmax agrees.",
  "--tokens FILE.json takes the text's ids (no BOS) instead of --text: a JSON array or an object with an \"ids\" array. " +
    "--dump-logits FILE writes the candidate's float32 logits of every position of every chunk/window, little-endian, " +
    "[sequence, position, vocab] (windows: sequences back to back, the last possibly shorter), complete or not at all.",
].join("\n\n");

export function builder(y: Argv) {
  return withCommonOptions(withDeviceOption(
    y
      .positional("candidate", { alias: "m", type: "string", describe: "The model to evaluate: .gguf file (any split), demo-shard folder, HF checkpoint folder or repo id (also -m, as llama-perplexity)" })
      .option("reference", { type: "string", describe: "The original model to compare with (KL divergence, same top, Δp); same forms as the candidate" })
      .option("text", { alias: "f", type: "string", describe: "Evaluation text file (UTF-8), tokenized with the model's tokenizer.json (or a GGUF's own tokenizer metadata)" })
      .option("tokens", { type: "string", describe: "Evaluation token ids instead of --text: JSON array, or object with an \"ids\" array (no BOS)" })
      .option("tokenizer", { type: "string", describe: "Folder with tokenizer.json (+ tokenizer_config.json); default: beside the candidate, else the reference, else a GGUF candidate's own metadata" })
      .option("protocol", { choices: PROTOCOLS, default: "llama" as Protocol, describe: "llama: llama-perplexity's chunks (second half scored); windows: the fixture's windows (all scored)" })
      .option("ctx", { alias: "c", type: "number", describe: "Chunk / window length in tokens (default 512 for llama, 256 for windows)" })
      .option("chunks", { type: "number", describe: "Evaluate at most this many chunks / windows" })
      .option("batch-windows", { type: "number", describe: "Chunks / windows per forward pass (default: logits of a batch within ~2 GiB, at most 64)" })
      .option("dump-logits", { type: "string", describe: "Write the candidate's float32 logits (every position, little-endian, [sequence, position, vocab]) to this file" })
      .conflicts("text", "tokens"),
  )).epilogue(EPILOGUE);
}

type Args = ArgumentsCamelCase<ReturnType<typeof builder> extends Argv<infer T> ? T : never>;

async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch (e) {
    throw new DeepcastError(`cannot read the text: ${(e as Error).message}`, { file });
  }
}

export async function handler(argv: Args): Promise<void> {
  const started = performance.now();
  const k = selectKernels(argv.simd);
  const threads = Math.max(1, Math.floor(argv.threads));
  if (argv.candidate === undefined) throw usageError("give the model to evaluate: deepcast validate MODEL (or -m MODEL, as llama-perplexity)");
  if (typeof argv.candidate !== "string") throw usageError("the model to evaluate is given twice (MODEL and -m MODEL): give it once");
  if (!argv.text && !argv.tokens) throw new DeepcastError("give the evaluation text with --text FILE or its token ids with --tokens FILE.json");
  const protocol = argv.protocol;
  const ctx = argv.ctx ?? DEFAULT_CTX[protocol];
  const ops = deviceOps(argv.device, "validate");

  const opened: WeightSource[] = [];
  let writer: LogitsFileWriter | null = null;
  const progress = progressView({ label: "validate", unit: protocol === "llama" ? "chunks" : "windows", withReference: argv.reference !== undefined });
  const onSignal = () => {
    progress.stop();
    if (writer) {
      try {
        unlinkSync(writer.tempFile);
      } catch {
        /* already gone */
      }
    }
    process.stderr.write("\ninterrupted: nothing was written\n");
    process.exit(130);
  };
  try {
    const candidate = await openWeights(argv.candidate, { threads, revision: argv.revision, onEvent: progress.onEvent });
    opened.push(candidate);
    const reference = argv.reference ? await openWeights(argv.reference, { threads, revision: argv.revision, onEvent: progress.onEvent }) : null;
    if (reference) opened.push(reference);
    const vocab = candidate.config.vocabSize;
    if (reference && reference.config.vocabSize !== vocab) {
      throw new DeepcastError(`the candidate's vocabulary (${vocab}) differs from the reference's (${reference.config.vocabSize}, ${reference.description})`, { file: candidate.description });
    }

    // Token ids of the text (no BOS) and the model's BOS convention.
    if (argv.tokenizer && !(await hasTokenizer(argv.tokenizer))) throw new DeepcastError("--tokenizer: no tokenizer.json in this folder", { file: argv.tokenizer });
    const places = [argv.tokenizer, argv.candidate, argv.reference];
    const tokenizerOpts = { fallbackBos: candidate.config.bosTokenId, revision: argv.revision };
    // With --tokens the tokenizer only gives BOS; a GGUF whose tokenizer cannot be rebuilt falls back to the config's BOS.
    const tokenizer: TextTokenizer | null = argv.tokens
      ? await findTokenizer(places, tokenizerOpts).catch((e: unknown) => { if (e instanceof DeepcastError) return null; throw e; })
      : await findTokenizer(places, tokenizerOpts);
    let ids: number[];
    if (argv.tokens) {
      ids = await readTokenIds(argv.tokens);
    } else {
      if (!tokenizer) {
        throw new DeepcastError(
          "no tokenizer.json beside the candidate" + (argv.reference ? " or the reference" : "") +
            ": give --tokenizer DIR (the original checkpoint folder), --reference DIR, or token ids with --tokens FILE.json",
          { file: argv.candidate },
        );
      }
      ids = tokenizer.encode(await readText(argv.text!));
    }
    const inputFile = argv.tokens ?? argv.text!;
    const bad = ids.findIndex((id) => id >= vocab);
    if (bad >= 0) throw new DeepcastError(`token ${bad} is id ${ids[bad]}, outside the model's vocabulary of ${vocab}`, { file: inputFile });
    const bos = tokenizer ? tokenizer.bosId : candidate.config.bosTokenId;
    const addBos = tokenizer ? tokenizer.addBos : true;
    if (bos !== null && bos >= vocab) throw new DeepcastError(`BOS id ${bos} is outside the model's vocabulary of ${vocab}`, { file: tokenizer?.description ?? candidate.description });
    for (const m of [candidate, reference]) {
      if (m && ctx > m.config.maxPositionEmbeddings) {
        throw new DeepcastError(`--ctx ${ctx} is longer than the model's max_position_embeddings ${m.config.maxPositionEmbeddings}`, { file: m.description });
      }
    }

    const plan = planProtocol(ids, { protocol, ctx, chunks: argv.chunks, bos, addBos });
    const batch = argv.batchWindows !== undefined ? Math.max(1, Math.floor(argv.batchWindows)) : defaultBatchSequences(ctx, vocab, reference !== null);
    const inputTokens = plan.sequences.reduce((n, q) => n + q.input.length, 0);
    const dumpBytes = inputTokens * vocab * 4;
    const unit = protocol === "llama" ? "chunks" : "windows";
    const planInfo = {
      protocol,
      ctx,
      [unit]: plan.sequences.length,
      available: plan.available,
      textTokens: ids.length,
      scoredTokens: plan.scoredTokens,
      bos,
      addBos,
      batchWindows: batch,
      forwardPasses: Math.ceil(plan.sequences.length / batch) * (reference ? 2 : 1),
    };

    if (argv.dryRun) {
      await printDryRun(argv.json, {
        command: "validate",
        input: inputFile,
        output: argv.dumpLogits ? dirname(resolve(argv.dumpLogits)) : null,
        fields: {
          candidate: candidate.description,
          reference: reference?.description ?? null,
          tokenizer: tokenizer?.description ?? null,
          ...planInfo,
          dumpLogits: argv.dumpLogits ? { file: argv.dumpLogits, bytes: dumpBytes } : null,
        },
        lines: [
          `would score ${plan.scoredTokens} tokens in ${plan.sequences.length} ${unit} of ${ctx} (${plan.available} in the text, protocol ${protocol}), ` +
            `${planInfo.forwardPasses} forward passes of up to ${batch} ${unit}` + (argv.dumpLogits ? `; logits file ${fmtBytes(dumpBytes)}` : ""),
        ],
        outputBytes: argv.dumpLogits ? dumpBytes : 0,
      });
      return;
    }

    if (argv.dumpLogits) {
      // Never a device node, FIFO, folder or link, even with --force; never inside an input folder.
      const exists = await lstat(argv.dumpLogits).catch(() => null);
      if (exists && !exists.isFile()) {
        throw new DeepcastError("--dump-logits names something that is not a regular file (a folder, link, FIFO or device); it is never replaced, even with --force",
          { file: argv.dumpLogits, code: "NOT_A_FILE" });
      }
      if (exists && !argv.force) throw new DeepcastError("the logits file exists: use --force to overwrite it", { file: argv.dumpLogits, code: "OUTPUT_EXISTS" });
      for (const input of [argv.candidate, argv.reference]) {
        if (input && (await stat(input).catch(() => null))?.isDirectory()) await refuseOutputInInput(dirname(resolve(argv.dumpLogits)), input);
      }
      const free = await freeBytes(dirname(resolve(argv.dumpLogits)));
      if (!argv.skipSpaceCheck && dumpBytes > free) {
        throw new DeepcastError(`the logits file needs ${fmtBytes(dumpBytes)}, ${fmtBytes(free)} free (--skip-space-check to try anyway)`, { file: argv.dumpLogits });
      }
      writer = await LogitsFileWriter.create(argv.dumpLogits);
    }
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);

    const err = process.stderr;
    err.write(`validate: ${plan.scoredTokens} tokens to score in ${plan.sequences.length} ${unit} of ${ctx} (protocol ${protocol}), ` +
      `${Math.ceil(plan.sequences.length / batch)} batch(es) of up to ${batch}${reference ? ", reference then candidate per batch" : ""}\n`);
    const r = await validate(candidate, reference, plan.sequences, {
      threads,
      ops,
      batchSequences: batch,
      logits: writer ?? undefined,
      onEvent: progress.onEvent,
    });
    // A NaN or Inf figure means the model (or the file) is broken: report it, keep no logits, exit non-zero.
    const nonFinite = [
      ["PPL", r.candidate.ppl],
      ...(r.reference ? [["PPL(base)", r.reference.ppl] as const] : []),
      ...(r.kld ? [["mean KLD", r.kld.meanKld.value] as const] : []),
    ].filter(([, v]) => !Number.isFinite(v as number));
    if (writer && nonFinite.length === 0) await writer.commit();

    const facts = runFacts(started, k, threads);
    const result = {
      command: "validate",
      candidate: candidate.description,
      reference: reference?.description ?? null,
      input: inputFile,
      tokenizer: tokenizer?.description ?? null,
      ...planInfo,
      ppl: r.candidate.ppl,
      pplUncertainty: r.candidate.uncertainty,
      nll: r.candidate.nll,
      ...(r.reference ? { pplBase: r.reference.ppl, pplBaseUncertainty: r.reference.uncertainty, nllBase: r.reference.nll } : {}),
      ...(r.kld ? { kld: r.kld } : {}),
      sequenceNll: r.candidate.sequenceNll,
      ...(r.reference ? { sequenceNllBase: r.reference.sequenceNll } : {}),
      dumpLogits: writer
        ? {
            file: writer.file,
            bytes: writer.bytes,
            shape: plan.sequences.every((q) => q.input.length === ctx) ? [plan.sequences.length, ctx, vocab] : null,
            sequenceLengths: plan.sequences.map((q) => q.input.length),
          }
        : null,
      forwardTokensPerModel: r.forwardTokens,
      candidateSeconds: r.candidateSeconds,
      referenceSeconds: r.referenceSeconds,
      candidateTokensPerSecond: r.forwardTokens / Math.max(r.candidateSeconds, 1e-9),
      ...deviceFacts(ops),
      ...facts,
    };
    const head = `protocol ${protocol}, ctx ${ctx}: ${plan.scoredTokens} tokens scored in ${plan.sequences.length} ${unit}`;
    const human = r.kld
      ? `${head}\n\n${formatKldSummary(r.kld)}\n\ndone in ${facts.seconds.toFixed(1)} s`
      : `${head}\nFinal estimate: PPL = ${r.candidate.ppl.toFixed(4)} +/- ${r.candidate.uncertainty.toFixed(5)}\ndone in ${facts.seconds.toFixed(1)} s` +
        (writer ? `; logits in ${writer.file} (${fmtBytes(writer.bytes)})` : "");
    printResult(argv.json, result, r.kld && writer ? `${human}; logits in ${writer.file} (${fmtBytes(writer.bytes)})` : human);
    if (nonFinite.length > 0) {
      throw new DeepcastError(
        `${nonFinite.map(([k, v]) => `${k} is ${String(v)}`).join(", ")}: the model produces non-finite values` + (writer ? "; no logits file was written" : ""),
        { file: candidate.description, code: "NON_FINITE" });
    }
  } finally {
    progress.stop();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    if (writer) await writer.abort();
    for (const m of opened) await m.close();
  }
}
