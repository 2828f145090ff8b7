import type { Argv, ArgumentsCamelCase } from "yargs";
import { describeToGguf, imatrixSummary, planToGguf, runToGguf } from "../convert/to-gguf.js";
import { parseSplitSize } from "../io/gguf-layout.js";
import { readImatrix } from "../io/imatrix.js";
import { openSource } from "../io/open-source.js";
import { ftypeNames } from "../quant/mix.js";
import { fmtBytes } from "../units.js";
import { printDryRun, printResult, runFacts, selectKernels, withCommonOptions, withProgress } from "./common.js";
import { DeepcastError } from "../errors.js";

export const command = "to-gguf <in>";
export const describe = "Convert an FP8 or BF16 DeepSeek-V3 checkpoint straight to GGUF (llama.cpp), quantized in one pass";

export function builder(y: Argv) {
  return withCommonOptions(
    y
      .positional("in", { type: "string", demandOption: true, describe: "Local folder or Hugging Face repo id" })
      .option("quant", { alias: "q", type: "string", demandOption: true, describe: `Output type or llama.cpp mix: ${ftypeNames().join(", ")} (case-insensitive)` })
      .option("output", { alias: "o", type: "string", demandOption: true, describe: "Output .gguf path (splits become NAME-00001-of-0000N.gguf)" })
      .option("split-max-size", { type: "string", describe: "Start a new file before this size (e.g. 50G, 500M)" })
      .option("split-max-tensors", { type: "number", describe: "At most this many tensors per file" })
      .option("tensor-type", { type: "string", array: true, default: [] as string[], describe: "Override a tensor's type: REGEX=TYPE (as llama-quantize; repeatable)" })
      .option("output-tensor-type", { type: "string", describe: "Type of output.weight" })
      .option("token-embedding-type", { type: "string", describe: "Type of token_embd.weight" })
      .option("imatrix", { type: "string", describe: "Importance matrix from llama-imatrix (GGUF or legacy .dat), used as llama-quantize --imatrix uses it (required by Q2_K_S)" })
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
  const plan = await planToGguf(source, argv.output, {
    ftype: argv.quant,
    split,
    tensorTypes: argv.tensorType,
    ...(argv.outputTensorType !== undefined ? { outputTensorType: argv.outputTensorType } : {}),
    ...(argv.tokenEmbeddingType !== undefined ? { tokenEmbeddingType: argv.tokenEmbeddingType } : {}),
    ...(argv.name !== undefined ? { name: argv.name } : {}),
    ...(argv.imatrix !== undefined ? { imatrix: await readImatrix(argv.imatrix) } : {}),
    dryRun: argv.dryRun,
  });
  const { output } = plan;
  const im = imatrixSummary(plan);
  if (im && !argv.json) {
    // llama-quantize: "did not find weights for <name>" -> that tensor is quantized without an imatrix
    for (const name of im.missing) process.stderr.write(`imatrix: did not find weights for ${name} (quantized without)\n`);
    for (const name of im.sizeMismatch) process.stderr.write(`imatrix: entry size does not match ${name} (quantized without)\n`);
    process.stderr.write(`imatrix: ${im.entries} entries from ${im.file}; ${im.withWeights} tensor(s) quantized with importance weights\n`);
  }

  if (argv.dryRun) {
    await printDryRun(argv.json, describeToGguf(plan, source.description, argv.output));
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
        onEvent,
      }),
  );
  const facts = runFacts(started, k, argv.threads);
  const result = {
    command: "to-gguf",
    input: source.description,
    quant: output.ftype.name,
    ...(im ? { imatrix: im } : {}),
    ...summary,
    ...facts,
    gbPerSecondIn: summary.bytesRead / 1e9 / facts.seconds,
    gbPerSecondOut: summary.bytesWritten / 1e9 / facts.seconds,
  };
  printResult(argv.json, result, summary.resumedFiles === summary.files.length
    ? `already complete: ${summary.files.join(", ")}`
    : `done: ${summary.files.join(", ")}: ${summary.tensors} tensors, ${fmtBytes(summary.bytesWritten)} in ${facts.seconds.toFixed(1)} s, peak RSS ${fmtBytes(facts.peakRssBytes)}`);
}
