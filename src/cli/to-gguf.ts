import type { Argv, ArgumentsCamelCase } from "yargs";
import { describeToGguf, imatrixSummary, planToGguf, runToGguf, type ToGgufPlan } from "../convert/to-gguf.js";
import { describeTarget, measuredLines, planTargetGguf, recipePathOf, targetSummary, type TargetReport } from "../convert/target-plan.js";
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
import { kldMeasure } from "./target-measure.js";

export const command = "to-gguf <in>";
export const describe = "Convert an FP8 or BF16 DeepSeek-V3 checkpoint straight to GGUF (llama.cpp), quantized in one pass";

export function builder(y: Argv) {
  return withCommonOptions(
    y
      .option("allow-non-finite", { type: "boolean", default: false, describe: "Convert FP8 NaN codes (0x7F/0xFF) and NaN/Inf/absurd block scales as they are instead of failing" })
      .positional("in", { type: "string", demandOption: true, describe: "Local folder or Hugging Face repo id" })
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
      .option("target-measure", { type: "string", describe: "With --target-*: calibrate the estimate by the KL divergence against the input, measured on this text (not your evaluation text); slower" })
      .option("target-measure-ctx", { type: "number", default: 512, describe: "Chunk length of the --target-measure text" })
      .option("target-measure-chunks", { type: "number", default: 16, describe: "At most this many chunks of the --target-measure text per measurement (the reference's log-probabilities of the scored positions are kept: chunks x ctx/2 x vocab x 4 bytes, 2.1 GB for DeepSeek-V3 at the defaults)" })
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
      "values a BF16 checkpoint would hold. The MTP layer is skipped, as llama.cpp does.",
  );
}

type Args = ArgumentsCamelCase<ReturnType<typeof builder> extends Argv<infer T> ? T : never>;

export async function handler(argv: Args): Promise<void> {
  const started = performance.now();
  const k = selectKernels(argv.simd);
  const source = await openSource(argv.in, { revision: argv.revision });
  const split = {
    ...(argv.splitMaxSize !== undefined ? { maxBytes: parseSplitSize(argv.splitMaxSize) } : {}),
    ...(argv.splitMaxTensors !== undefined ? { maxTensors: argv.splitMaxTensors } : {}),
  };
  if (!argv.output.endsWith(".gguf")) throw new DeepcastError("the output name must end in .gguf", { file: argv.output });
  const calibration = argv.calibration === undefined ? null : await calibrationImatrix({
    model: argv.in, text: argv.calibration, output: argv.output, ctx: argv.calibrationCtx, chunks: argv.calibrationChunks,
    budget: memoryBudget(argv.memory), threads: Math.max(1, Math.floor(argv.threads)), revision: argv.revision, dryRun: argv.dryRun,
  });
  const imatrixFile = calibration?.path ?? argv.imatrix;
  if (argv.targetSize !== undefined && argv.targetBpw !== undefined) throw new DeepcastError("give --target-size or --target-bpw, not both", { code: "USAGE" });
  const target = argv.targetSize !== undefined ? { bytes: parseTargetSize(argv.targetSize) } : argv.targetBpw !== undefined ? { bpw: argv.targetBpw } : undefined;
  if (!target && argv.quant === undefined) throw new DeepcastError("missing --quant (or --target-size / --target-bpw)", { code: "USAGE" });
  if (!target && argv.targetAnalytic) throw new DeepcastError("--target-analytic needs --target-size or --target-bpw", { code: "USAGE" });
  if (!target && argv.targetMeasure !== undefined) throw new DeepcastError("--target-measure needs --target-size or --target-bpw", { code: "USAGE" });
  if (argv.targetMeasure !== undefined && argv.targetAnalytic) throw new DeepcastError("--target-measure and --target-analytic exclude each other (the measurement reads the weights)", { code: "USAGE" });
  const kld = target && argv.targetMeasure !== undefined
    ? await kldMeasure({ model: argv.in, text: argv.targetMeasure, ctx: argv.targetMeasureCtx, chunks: argv.targetMeasureChunks, threads: Math.max(1, Math.floor(argv.threads)), ...(argv.revision !== undefined ? { revision: argv.revision } : {}) })
    : undefined;
  if (kld && !argv.json) process.stderr.write(`target-measure: ${kld.chunks} chunks, ${kld.positions} scored positions per measurement (reference pass ${kld.referenceSeconds.toFixed(1)} s)\n`);
  const tensorTypes = [...argv.tensorType, ...(argv.recipe !== undefined ? await readRecipe(argv.recipe) : [])];
  const planOpts = {
    split,
    tensorTypes,
    ...(argv.outputTensorType !== undefined ? { outputTensorType: argv.outputTensorType } : {}),
    ...(argv.tokenEmbeddingType !== undefined ? { tokenEmbeddingType: argv.tokenEmbeddingType } : {}),
    ...(argv.name !== undefined ? { name: argv.name } : {}),
    ...(imatrixFile !== undefined ? { imatrix: await readImatrix(imatrixFile) } : {}),
    dryRun: argv.dryRun,
  };
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
      ...(kld ? {
        measureKld: kld.measure,
        threads: argv.threads,
        onKld: (what: string, v: number, i: number, n: number) => {
          if (!argv.json) process.stderr.write(`\nKLD [${i + 1}/${n}] ${what}: ${v.toExponential(4)}`);
        },
      } : {}),
    })
    : await planToGguf(source, argv.output, { ...planOpts, ftype: argv.quant! });
  if (target && !argv.json && (process.stderr.isTTY || kld)) process.stderr.write("\n");
  const { output } = plan;
  const tp = plan.target;
  const im = imatrixSummary(plan);
  if (im && !argv.json) {
    // llama-quantize: "did not find weights for <name>" -> that tensor is quantized without an imatrix
    for (const name of im.missing) process.stderr.write(`imatrix: did not find weights for ${name} (quantized without)\n`);
    for (const name of im.sizeMismatch) process.stderr.write(`imatrix: entry size does not match ${name} (quantized without)\n`);
    process.stderr.write(`imatrix: ${im.entries} entries from ${im.file}; ${im.withWeights} tensor(s) quantized with importance weights\n`);
  }

  if (argv.dryRun) {
    const d = describeToGguf(plan, source.description, argv.output);
    await printDryRun(argv.json, tp ? describeTarget(d, tp, argv.output) : d);
    return;
  }

  if (tp?.measured && !argv.json) for (const line of measuredLines(tp.measured)) process.stderr.write(`${line}\n`);
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
    ...(calibration ? { calibration: { file: calibration.path, reused: calibration.reused, ...(calibration.made ? { chunks: calibration.made.chunks, ppl: calibration.made.ppl, seconds: calibration.made.forwardSeconds } : {}) } } : {}),
    ...(tp ? { target: targetSummary(tp), recipeFile: recipePathOf(argv.output) } : {}),
    ...summary,
    ...facts,
    gbPerSecondIn: summary.bytesRead / 1e9 / facts.seconds,
    gbPerSecondOut: summary.bytesWritten / 1e9 / facts.seconds,
  };
  printResult(argv.json, result, summary.resumedFiles === summary.files.length
    ? `already complete: ${summary.files.join(", ")}`
    : `done: ${summary.files.join(", ")}: ${summary.tensors} tensors, ${fmtBytes(summary.bytesWritten)} in ${facts.seconds.toFixed(1)} s, peak RSS ${fmtBytes(facts.peakRssBytes)}`);
}
