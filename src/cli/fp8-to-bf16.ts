import type { Argv, ArgumentsCamelCase } from "yargs";
import { describeFp8ToBf16, planFp8ToBf16, runFp8ToBf16 } from "../convert/fp8-to-bf16.js";
import { fmtBytes } from "../units.js";
import { loadCheckpoint } from "../io/checkpoint.js";
import { checkCheckpointConfig } from "../io/hf-config.js";
import { openSource } from "../io/open-source.js";
import { printDryRun, printResult, runFacts, selectKernels, withCommonOptions, withProgress } from "./common.js";

export const command = "fp8-to-bf16 <in> <out>";
export const describe = "Dequantize an FP8 block-scaled checkpoint (DeepSeek-V3/R1/V3.1/V3.2/V4, Kimi-K2) to BF16 safetensors";

export function builder(y: Argv) {
  return withCommonOptions(
    y
      .option("experts", {
        type: "string",
        choices: ["bf16", "fp8"],
        default: "bf16",
        describe: "DeepSeek-V4's packed FP4 routed experts: bf16 (with everything else), or fp8: keep the checkpoint FP8 and cast the experts FP4 -> FP8 losslessly (cast_e2m1fn_to_e4m3fn; refuses a 128x128 tile that would round)",
      })
      .option("allow-non-finite", { type: "boolean", default: false, describe: "Convert FP8 NaN codes (0x7F/0xFF) and NaN/Inf/absurd block scales as they are instead of failing" })
      .positional("in", { type: "string", demandOption: true, describe: "Local folder or Hugging Face repo id (deepseek-ai/DeepSeek-V3)" })
      .positional("out", { type: "string", demandOption: true, describe: "Output folder (created; resumable)" }),
  ).epilogue(
    "Output: BF16 shards under the input's file names, model.safetensors.index.json without the *_scale_inv entries, " +
      "config.json without quantization_config, other small files copied. Each weight is bf16(f32(fp8) * scale_inv), " +
      "bit-identical to DeepSeek's fp8_cast_bf16.py. DeepSeek-V4: FP8 x 2^(e-127) (E8M0 .scale tiles) and packed FP4 experts " +
      "e2m1 x 2^(e-127), both exact in BF16 (README: deepcast's definition). Rerun the same command after an interruption to resume.",
  );
}

type Args = ArgumentsCamelCase<ReturnType<typeof builder> extends Argv<infer T> ? T : never>;

export async function handler(argv: Args): Promise<void> {
  const started = performance.now();
  const k = selectKernels(argv.simd);
  const source = await openSource(argv.in, { revision: argv.revision });
  const ckpt = await loadCheckpoint(source);
  checkCheckpointConfig(ckpt, "present");
  const plan = planFp8ToBf16(ckpt, { experts: argv.experts as "bf16" | "fp8" });

  if (argv.dryRun) {
    await printDryRun(argv.json, describeFp8ToBf16(plan, source.description, argv.out));
    return;
  }

  const summary = await withProgress({ label: "fp8-to-bf16", resumeHint: "rerun the same command to resume" }, (onEvent) =>
    runFp8ToBf16(ckpt, plan, {
      out: argv.out,
      kernels: k,
      threads: argv.threads,
      force: argv.force,
      skipSpaceCheck: argv.skipSpaceCheck,
      allowNonFinite: argv.allowNonFinite,
      onEvent,
    }));
  const facts = runFacts(started, k, argv.threads);
  const result = { command: "fp8-to-bf16", input: source.description, output: argv.out, ...summary, ...facts, gbPerSecond: summary.bytesWritten / 1e9 / facts.seconds };
  printResult(argv.json, result,
    `done: ${summary.shards} shards (${summary.resumedShards} resumed), ${summary.fp8Tensors} ${plan.experts === "fp8" ? "FP4 tensors cast to FP8" : "FP8 tensors dequantized"}, ` +
      `${fmtBytes(summary.bytesWritten)} written in ${facts.seconds.toFixed(1)} s, peak RSS ${fmtBytes(facts.peakRssBytes)}`);
}
