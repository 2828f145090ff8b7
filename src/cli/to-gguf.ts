import type { Argv, ArgumentsCamelCase } from "yargs";
import { stat } from "node:fs/promises";
import { describeToGguf, imatrixSummary, planToGguf, runToGguf, type ToGgufPlan, type ToGgufSummary } from "../convert/to-gguf.js";
import { describeGgufSource, planGgufSource } from "../convert/gguf-source-plan.js";
import { runGgufSource } from "../convert/gguf-source-run.js";
import type { Kernels } from "../quant/kernels.js";
import { describeTarget, planTargetGguf, recipePathOf, targetSummary, type TargetReport } from "../convert/target-plan.js";
import { writeFileAtomic } from "../io/write.js";
import { readRecipe } from "../quant/recipe.js";
import { parseTargetSize } from "../quant/target-mix.js";
import { parseSplitSize } from "../io/gguf-layout.js";
import { readImatrix } from "../io/imatrix.js";
import { openSource } from "../io/open-source.js";
import { ftypeNames } from "../quant/mix.js";
import { fmtBytes } from "../units.js";
import { printDryRun, printResult, runFacts, selectKernels, withCommonOptions, withProgress } from "./common.js";
import { DeepcastError } from "../errors.js";
import { calibrationImatrix } from "./calibration.js";
import { memoryBudget } from "./imatrix.js";

export const command = "to-gguf <in>";
export const describe = "Convert an FP8 or BF16 DeepSeek-V3 checkpoint straight to GGUF (llama.cpp), quantized in one pass; or requantize a deepseek2 GGUF, as llama-quantize";

export function builder(y: Argv) {
  return withCommonOptions(
    y
      .option("allow-non-finite", { type: "boolean", default: false, describe: "Convert FP8 NaN codes (0x7F/0xFF) and NaN/Inf/absurd block scales as they are instead of failing" })
      .positional("in", { type: "string", demandOption: true, describe: "Local folder or Hugging Face repo id; or a deepseek2 .gguf file (for a split model, any of its -0000i-of-0000N.gguf files)" })
      .option("keep-split", { type: "boolean", default: false, describe: "GGUF input: one output file per input part (as llama-quantize --keep-split)" })
      .option("allow-requantize", { type: "boolean", default: false, describe: "GGUF input: dequantize and requantize tensors that are already quantized (as llama-quantize --allow-requantize); without it they are an error" })
      .option("quant", { alias: ["q", "outtype"], type: "string", describe: `Output type or llama.cpp mix: ${ftypeNames().join(", ")} (case-insensitive); with --target-* it only names general.file_type` })
      .option("output", { alias: ["o", "outfile"], type: "string", demandOption: true, describe: "Output .gguf path (splits become NAME-00001-of-0000N.gguf)" })
      .option("split-max-size", { type: "string", describe: "Start a new file before this size (e.g. 50G, 500M)" })
      .option("split-max-tensors", { type: "number", describe: "At most this many tensors per file" })
      .option("tensor-type", { type: "string", array: true, default: [] as string[], describe: "Override a tensor's type: REGEX=TYPE (as llama-quantize; repeatable)" })
      .option("output-tensor-type", { type: "string", describe: "Type of output.weight" })
      .option("token-embedding-type", { type: "string", describe: "Type of token_embd.weight" })
      .option("recipe", { type: "string", describe: "REGEX=TYPE entries separated by spaces/newlines (llama-quantize --tensor-type-file), after any --tensor-type; first match wins" })
      .option("target-size", { type: "string", describe: "Choose every tensor's type so the file lands within 3% below this size (bytes, or K/M/G/T in powers of 1000, e.g. 180G)" })
      .option("target-bpw", { type: "number", describe: "Like --target-size, for this many bits per weight over all tensor data" })
      .option("target-analytic", { type: "boolean", default: false, describe: "With --target-*: skip reading the weights; estimate every error from the type's bits alone" })
      .option("imatrix", { type: "string", describe: "Importance matrix from llama-imatrix (GGUF or legacy .dat), used as llama-quantize --imatrix uses it (required by Q2_K_S)" })
      .option("calibration", { type: "string", describe: "Calibration text: compute the importance matrix first (deepcast imatrix, kept as <output>.imatrix.gguf) and quantize with it" })
      .option("calibration-ctx", { type: "number", default: 512, describe: "Chunk length of the --calibration pass" })
      .option("calibration-chunks", { type: "number", describe: "At most this many chunks in the --calibration pass" })
      .option("memory", { type: "string", describe: "Memory budget of the --calibration pass (e.g. 64G; default 75% of RAM)" })
      .conflicts("calibration", "imatrix")
      .option("name", { type: "string", describe: "general.name (default: derived from the input folder name, like llama.cpp)" })
  ).epilogue(
    "Tensor data and metadata are those of llama.cpp v0.4.0's convert_hf_to_gguf.py (--outtype bf16) followed by " +
      "llama-quantize, byte for byte, without a BF16 intermediate on disk: FP8 weights are dequantized in memory to the " +
      "values a BF16 checkpoint would hold. The MTP layer is skipped, as llama.cpp does.\n\n" +
      "With a .gguf input (deepseek2, F32/F16/BF16 tensors, or quantized ones with --allow-requantize) the output is " +
      "llama-quantize's: the same tensor order, types, bytes and metadata (general.file_type, quantization_version, " +
      "quantize.imatrix.*; split keys dropped). A split input is read whole; --split-max-* splits the output.",
  );
}

type Args = ArgumentsCamelCase<ReturnType<typeof builder> extends Argv<infer T> ? T : never>;

export async function handler(argv: Args): Promise<void> {
  const started = performance.now();
  const k = selectKernels(argv.simd);
  if (await isGgufInput(argv.in)) return ggufHandler(argv, started, k);
  const source = await openSource(argv.in, { revision: argv.revision });
  const { calibration, planOpts: common } = await planInputs(argv);
  if (argv.targetSize !== undefined && argv.targetBpw !== undefined) throw new DeepcastError("give --target-size or --target-bpw, not both", { code: "USAGE" });
  const target = argv.targetSize !== undefined ? { bytes: parseTargetSize(argv.targetSize) } : argv.targetBpw !== undefined ? { bpw: argv.targetBpw } : undefined;
  if (!target && argv.quant === undefined) throw new DeepcastError("missing --quant (or --target-size / --target-bpw)", { code: "USAGE" });
  if (!target && argv.targetAnalytic) throw new DeepcastError("--target-analytic needs --target-size or --target-bpw", { code: "USAGE" });
  const planOpts = { ...common, ...(argv.name !== undefined ? { name: argv.name } : {}) };
  const plan: ToGgufPlan & { target?: TargetReport } = target
    ? await planTargetGguf(source, argv.output, {
      ...planOpts,
      ...(argv.quant !== undefined ? { ftype: argv.quant } : {}),
      target,
      kernels: k,
      analyticOnly: argv.targetAnalytic,
      onMeasure: (name, i, n) => {
        if (!argv.json && process.stderr.isTTY) process.stderr.write(`\rmeasuring [${i + 1}/${n}] ${name.padEnd(40)}`);
      },
    })
    : await planToGguf(source, argv.output, { ...planOpts, ftype: argv.quant! });
  if (target && !argv.json && process.stderr.isTTY) process.stderr.write("\n");
  const { output } = plan;
  const tp = plan.target;
  const im = imatrixSummary(plan);
  if (!argv.json) printImatrixNotes(im);

  if (argv.dryRun) {
    const d = describeToGguf(plan, source.description, argv.output);
    await printDryRun(argv.json, tp ? describeTarget(d, tp, argv.output) : d);
    return;
  }

  const summary = await withProgress(
    { label: `to-gguf ${output.ftype.name}`, resumeHint: "rerun the same command to resume (completed split files are kept)" },
    (onEvent) =>
      runToGguf(plan, {
        kernels: k,
        threads: argv.threads,
        force: argv.force,
        skipSpaceCheck: argv.skipSpaceCheck,
        allowNonFinite: argv.allowNonFinite,
        onEvent,
      }),
  );
  if (tp) await writeFileAtomic(recipePathOf(argv.output), tp.recipe);
  const facts = runFacts(started, k, argv.threads);
  const result = {
    command: "to-gguf",
    input: source.description,
    quant: output.ftype.name,
    ...(im ? { imatrix: im } : {}),
    ...calibrationResult(calibration),
    ...(tp ? { target: targetSummary(tp), recipeFile: recipePathOf(argv.output) } : {}),
    ...summary,
    ...facts,
    gbPerSecondIn: summary.bytesRead / 1e9 / facts.seconds,
    gbPerSecondOut: summary.bytesWritten / 1e9 / facts.seconds,
  };
  printResult(argv.json, result, doneLine(summary, facts));
}

function doneLine(summary: ToGgufSummary, facts: ReturnType<typeof runFacts>): string {
  return summary.resumedFiles === summary.files.length
    ? `already complete: ${summary.files.join(", ")}`
    : `done: ${summary.files.join(", ")}: ${summary.tensors} tensors, ${fmtBytes(summary.bytesWritten)} in ${facts.seconds.toFixed(1)} s, peak RSS ${fmtBytes(facts.peakRssBytes)}`;
}

/** What both inputs plan from: output splits, the type overrides and the imatrix (computed first with --calibration). */
async function planInputs(argv: Args) {
  if (!argv.output.endsWith(".gguf")) throw new DeepcastError("the output name must end in .gguf", { file: argv.output });
  const split = {
    ...(argv.splitMaxSize !== undefined ? { maxBytes: parseSplitSize(argv.splitMaxSize) } : {}),
    ...(argv.splitMaxTensors !== undefined ? { maxTensors: argv.splitMaxTensors } : {}),
  };
  const calibration = argv.calibration === undefined ? null : await calibrationImatrix({
    model: argv.in, text: argv.calibration, output: argv.output, ctx: argv.calibrationCtx, chunks: argv.calibrationChunks,
    budget: memoryBudget(argv.memory), threads: Math.max(1, Math.floor(argv.threads)), revision: argv.revision, dryRun: argv.dryRun,
  });
  const imatrixFile = calibration?.path ?? argv.imatrix;
  const tensorTypes = [...argv.tensorType, ...(argv.recipe !== undefined ? await readRecipe(argv.recipe) : [])];
  const planOpts = {
    split,
    tensorTypes,
    ...(argv.outputTensorType !== undefined ? { outputTensorType: argv.outputTensorType } : {}),
    ...(argv.tokenEmbeddingType !== undefined ? { tokenEmbeddingType: argv.tokenEmbeddingType } : {}),
    ...(imatrixFile !== undefined ? { imatrix: await readImatrix(imatrixFile) } : {}),
    dryRun: argv.dryRun,
  };
  return { calibration, planOpts };
}

function calibrationResult(calibration: Awaited<ReturnType<typeof planInputs>>["calibration"]) {
  return calibration ? { calibration: { file: calibration.path, reused: calibration.reused, ...(calibration.made ? { chunks: calibration.made.chunks, ppl: calibration.made.ppl, seconds: calibration.made.forwardSeconds } : {}) } } : {};
}

/** llama-quantize's notes on the imatrix: "did not find weights for <name>" -> that tensor is quantized without. */
function printImatrixNotes(im: ReturnType<typeof imatrixSummary>): void {
  if (!im) return;
  for (const name of im.missing) process.stderr.write(`imatrix: did not find weights for ${name} (quantized without)\n`);
  for (const name of im.sizeMismatch) process.stderr.write(`imatrix: entry size does not match ${name} (quantized without)\n`);
  process.stderr.write(`imatrix: ${im.entries} entries from ${im.file}; ${im.withWeights} tensor(s) quantized with importance weights\n`);
}

/** A file (or a missing *.gguf path, for the reader to name) is a GGUF input; anything else is a checkpoint. */
async function isGgufInput(spec: string): Promise<boolean> {
  const s = await stat(spec).catch(() => null);
  return s ? s.isFile() : /\.gguf$/i.test(spec);
}

/** to-gguf IN.gguf: requantize as llama-quantize. */
async function ggufHandler(argv: Args, started: number, k: Kernels): Promise<void> {
  const notForGguf = [
    ["--target-size", argv.targetSize], ["--target-bpw", argv.targetBpw], ["--name", argv.name],
  ].filter(([, v]) => v !== undefined).map(([o]) => o);
  if (argv.targetAnalytic) notForGguf.push("--target-analytic");
  if (notForGguf.length) throw new DeepcastError(`${notForGguf.join(", ")} apply to checkpoint inputs, not to a GGUF`, { code: "USAGE" });
  if (argv.quant === undefined) throw new DeepcastError("missing --quant", { code: "USAGE" });
  const { calibration, planOpts } = await planInputs(argv);
  if (argv.keepSplit && (argv.splitMaxSize !== undefined || argv.splitMaxTensors !== undefined)) {
    throw new DeepcastError("--keep-split keeps the input's parts: it does not go with --split-max-size/--split-max-tensors", { code: "USAGE" });
  }
  const plan = await planGgufSource(argv.in, argv.output, { ...planOpts, ftype: argv.quant, allowRequantize: argv.allowRequantize, keepSplit: argv.keepSplit });
  const im = imatrixSummary(plan);
  if (!argv.json) printImatrixNotes(im);
  if (argv.dryRun) {
    await printDryRun(argv.json, describeGgufSource(plan, argv.output));
    return;
  }
  if (!argv.json && plan.requantized.length) process.stderr.write(`requantizing ${plan.requantized.length} already quantized tensor(s) (--allow-requantize)\n`);
  const summary = await withProgress(
    { label: `to-gguf ${plan.output.ftype.name}`, resumeHint: "rerun the same command to resume (completed split files are kept)" },
    (onEvent) => runGgufSource(plan, {
      threads: argv.threads,
      force: argv.force,
      skipSpaceCheck: argv.skipSpaceCheck,
      allowNonFinite: argv.allowNonFinite,
      onEvent,
    }),
  );
  const facts = runFacts(started, k, argv.threads);
  printResult(argv.json, {
    command: "to-gguf",
    input: plan.reader.path,
    quant: plan.output.ftype.name,
    requantized: plan.requantized.length,
    ...(im ? { imatrix: im } : {}),
    ...calibrationResult(calibration),
    ...summary,
    ...facts,
    gbPerSecondIn: summary.bytesRead / 1e9 / facts.seconds,
    gbPerSecondOut: summary.bytesWritten / 1e9 / facts.seconds,
  }, doneLine(summary, facts));
}
