import type { Argv, ArgumentsCamelCase } from "yargs";
import { describeToDemo, planToDemo, planToDemoV4, runToDemo } from "../convert/to-demo.js";
import { DeepcastError } from "../errors.js";
import { checkpointGeneration } from "../formats/generation.js";
import { loadCheckpoint } from "../io/checkpoint.js";
import { checkCheckpointConfig } from "../io/hf-config.js";
import { openSource } from "../io/open-source.js";
import { fmtBytes } from "../units.js";
import { printDryRun, printResult, runFacts, selectKernels, withCommonOptions, withProgress } from "./common.js";

export const command = "to-demo <in> <out>";
export const describe = "Write the model-parallel shards of DeepSeek's inference demo (convert.py + generate.py --ckpt-path; V3, V3.2, V4), streamed";

export function builder(y: Argv) {
  return withCommonOptions(
    y
      .option("allow-non-finite", { type: "boolean", default: false, describe: "Convert FP8 NaN codes (0x7F/0xFF) and NaN/Inf/absurd block scales as they are instead of failing" })
      .positional("in", { type: "string", demandOption: true, describe: "Local folder or Hugging Face repo id (FP8 or BF16 HF checkpoint)" })
      .positional("out", { type: "string", demandOption: true, describe: "Output folder (created; resumable)" })
      .option("model-parallel", { type: "number", demandOption: true, describe: "Number of ranks N: writes model{i}-mp{N}.safetensors for i = 0..N-1" })
      .option("n-experts", { type: "number", describe: "Routed experts (convert.py --n-experts); default: n_routed_experts from config.json (256 for V3)" })
      .option("dtype", {
        choices: ["keep", "bf16"] as const,
        default: "keep" as const,
        describe: "keep: tensors as stored (FP8 weights with their scales); bf16: dequantize FP8 on the way (as fp8_cast_bf16.py) for GPUs without FP8 (V3, V3.2)",
      })
      .option("expert-dtype", {
        choices: ["fp4", "fp8"] as const,
        describe: "DeepSeek-V4's packed FP4 routed experts (convert.py --expert-dtype): fp4 (default) writes them as safetensors F4; fp8 casts them losslessly to FP8 (cast_e2m1fn_to_e4m3fn; refuses a 128x128 tile that would round)",
      })
      .option("max-seq-len", { type: "number", describe: "max_seq_len in the demo config; default min(max_position_embeddings, 4 x original_seq_len), which keeps YaRN on (V4: not written, the demo's 4096)" })
  ).epilogue(
    "Output: model{i}-mp{N}.safetensors with the names, splits and tensor layout of DeepSeek's inference/convert.py " +
      "(MTP layers dropped, routed experts whole on rank floor(e/(E/N)) under their global index), the tokenizer files, " +
      "and config.json with the demo's ModelArgs (pass it to generate.py --config). Each input tensor is read once; memory " +
      "stays at a few chunks. With --dtype keep, FP8 splits must fall on 128-block edges. DeepSeek-V4 as its own convert.py: " +
      "MTP embed/head dropped, wo_a dequantized to BF16, FP4 experts as F4 (or --expert-dtype fp8), tokenizer.json and " +
      "tokenizer_config.json copied. Rerun the same command after an interruption to resume.",
  );
}

type Args = ArgumentsCamelCase<ReturnType<typeof builder> extends Argv<infer T> ? T : never>;

export async function handler(argv: Args): Promise<void> {
  const started = performance.now();
  const k = selectKernels(argv.simd);
  const done = await withProgress({ label: "to-demo", resumeHint: "rerun the same command to resume", ranks: argv.modelParallel }, async (progress) => {
    const source = await openSource(argv.in, { revision: argv.revision, onEvent: progress.onEvent });
    const ckpt = await loadCheckpoint(source);
    let plan;
    if (checkpointGeneration(ckpt.config, ckpt.weightMap.keys()) === "deepseek-v4") {
      checkCheckpointConfig(ckpt, "present");
      if (argv.dtype !== "keep") {
        throw new DeepcastError("--dtype bf16 is for DeepSeek-V3/V3.2: V4's demo runs FP8 weights (convert.py dequantizes only wo_a); --expert-dtype chooses the experts' format", { code: "USAGE" });
      }
      plan = planToDemoV4(ckpt, { modelParallel: argv.modelParallel, nExperts: argv.nExperts, expertDtype: argv.expertDtype, maxSeqLen: argv.maxSeqLen });
    } else {
      if (argv.expertDtype !== undefined) {
        throw new DeepcastError("--expert-dtype is for DeepSeek-V4's packed FP4 experts; this checkpoint is not DeepSeek-V4", { file: source.description, code: "USAGE" });
      }
      checkCheckpointConfig(ckpt, "full", { accept: ["deepseek-v32"] });
      plan = planToDemo(ckpt, { modelParallel: argv.modelParallel, nExperts: argv.nExperts, dtype: argv.dtype, maxSeqLen: argv.maxSeqLen });
    }

    if (argv.dryRun) {
      await printDryRun(argv.json, describeToDemo(plan, source.description, argv.out));
      return null;
    }
    const summary = await runToDemo(ckpt, plan, {
      out: argv.out,
      kernels: k,
      threads: argv.threads,
      force: argv.force,
      skipSpaceCheck: argv.skipSpaceCheck,
      allowNonFinite: argv.allowNonFinite,
      onEvent: progress.onEvent,
    });
    return { source, plan, summary };
  });
  if (!done) return;
  const { source, plan, summary } = done;
  const facts = runFacts(started, k, argv.threads);
  const result = {
    command: "to-demo",
    input: source.description,
    output: argv.out,
    modelParallel: plan.mp,
    dtype: plan.dtype,
    ...(plan.expertDtype ? { expertDtype: plan.expertDtype } : {}),
    ...summary,
    ...facts,
    gbPerSecond: summary.bytesWritten / 1e9 / facts.seconds,
  };
  printResult(argv.json, result,
    `done: ${summary.ranks} rank files (${summary.resumedFiles} already complete, ${summary.resumedShards} input shards resumed), ` +
      `${fmtBytes(summary.bytesWritten)} written in ${facts.seconds.toFixed(1)} s, peak RSS ${fmtBytes(facts.peakRssBytes)}`);
}
