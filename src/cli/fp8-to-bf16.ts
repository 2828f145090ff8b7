import type { Argv, ArgumentsCamelCase } from "yargs";
import { planFp8ToBf16, runFp8ToBf16 } from "../convert/fp8-to-bf16.js";
import { fmtBytes } from "../units.js";
import { freeBytes } from "../io/write.js";
import { loadCheckpoint } from "../io/checkpoint.js";
import { openSource } from "../io/open-source.js";
import { printResult, runFacts, selectKernels, withCommonOptions, withProgress } from "./common.js";

export const command = "fp8-to-bf16 <in> <out>";
export const describe = "Dequantize an FP8 block-scaled checkpoint (DeepSeek-V3/R1/V3.1, Kimi-K2) to BF16 safetensors";

export function builder(y: Argv) {
  return withCommonOptions(
    y
      .positional("in", { type: "string", demandOption: true, describe: "Local folder or Hugging Face repo id (deepseek-ai/DeepSeek-V3)" })
      .positional("out", { type: "string", demandOption: true, describe: "Output folder (created; resumable)" }),
  ).epilogue(
    "Output: BF16 shards under the input's file names, model.safetensors.index.json without the *_scale_inv entries, " +
      "config.json without quantization_config, other small files copied. Each weight is bf16(f32(fp8) * scale_inv), " +
      "bit-identical to DeepSeek's fp8_cast_bf16.py. Rerun the same command after an interruption to resume.",
  );
}

type Args = ArgumentsCamelCase<ReturnType<typeof builder> extends Argv<infer T> ? T : never>;

export async function handler(argv: Args): Promise<void> {
  const started = performance.now();
  const k = selectKernels(argv.simd);
  const source = await openSource(argv.in, { revision: argv.revision });
  const ckpt = await loadCheckpoint(source);
  const plan = planFp8ToBf16(ckpt);

  if (argv.dryRun) {
    const free = await freeBytes(argv.out);
    const report = {
      command: "fp8-to-bf16",
      input: source.description,
      output: argv.out,
      shards: plan.shards.map((s) => ({ file: s.name, tensors: s.tensors.length, bytes: s.bytes })),
      files: ["model.safetensors.index.json", ...(plan.config ? ["config.json"] : []), ...plan.copyFiles],
      fp8Tensors: plan.fp8Tensors,
      droppedScales: plan.droppedScales,
      inputBytes: plan.inputBytes,
      outputBytes: plan.outputBytes,
      freeBytes: Number.isFinite(free) ? free : null,
      fits: plan.outputBytes <= free,
    };
    if (argv.json) {
      process.stdout.write(JSON.stringify(report, null, 2) + "\n");
      return;
    }
    for (const s of report.shards) console.log(`${s.file}  ${s.tensors} tensors  ${fmtBytes(s.bytes)}`);
    console.log(`files: ${report.files.join(", ")}`);
    console.log(`${plan.fp8Tensors} FP8 tensors dequantized, ${plan.droppedScales} scales dropped`);
    console.log(`read ${fmtBytes(plan.inputBytes)}, write ${fmtBytes(plan.outputBytes)}; free at ${argv.out}: ${fmtBytes(free)}${report.fits ? "" : "  (NOT ENOUGH)"}`);
    return;
  }

  const summary = await withProgress({ total: plan.outputBytes, label: "fp8-to-bf16", resumeHint: "rerun the same command to resume" }, (progress) =>
    runFp8ToBf16(ckpt, plan, {
      out: argv.out,
      kernels: k,
      threads: argv.threads,
      force: argv.force,
      skipSpaceCheck: argv.skipSpaceCheck,
      onProgress: (_in, out) => progress.add(out),
      onShard: (e) =>
        progress.line(
          e.skipped
            ? `[${e.index + 1}/${e.count}] ${e.shard}: already complete, skipped`
            : `[${e.index + 1}/${e.count}] ${e.shard}: ${fmtBytes(e.bytes)} in ${e.seconds.toFixed(1)} s (${(e.bytes / 1e9 / Math.max(e.seconds, 1e-9)).toFixed(2)} GB/s)`,
        ),
    }));
  const facts = runFacts(started, k, argv.threads);
  const result = { command: "fp8-to-bf16", input: source.description, output: argv.out, ...summary, ...facts, gbPerSecond: summary.bytesWritten / 1e9 / facts.seconds };
  printResult(argv.json, result,
    `done: ${summary.shards} shards (${summary.resumedShards} resumed), ${summary.fp8Tensors} FP8 tensors dequantized, ` +
      `${fmtBytes(summary.bytesWritten)} written in ${facts.seconds.toFixed(1)} s, peak RSS ${fmtBytes(facts.peakRssBytes)}`);
}
