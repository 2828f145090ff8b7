/** Options and helpers shared by every command. */
import { availableParallelism } from "node:os";
import type { Argv } from "yargs";
import { kernels, type Kernels } from "../quant/kernels.js";
import { loadNative } from "../quant/native.js";

export function withCommonOptions<T>(y: Argv<T>) {
  return y
    .option("threads", { type: "number", default: availableParallelism(), describe: "Compute threads for the native kernels" })
    .option("json", { type: "boolean", default: false, describe: "Print a machine-readable summary on stdout" })
    .option("dry-run", { type: "boolean", default: false, describe: "Show what would be written (files, sizes, free disk) without writing" })
    .option("force", { type: "boolean", default: false, describe: "Overwrite an existing output folder that holds something else" })
    .option("simd", { choices: ["auto", "avx2", "scalar"] as const, default: "auto" as const, describe: "SIMD level of the native kernels (all give identical bytes)" });
}

/** Kernels with the requested SIMD level; the level actually used is reported in summaries. */
export function selectKernels(simd: "auto" | "avx2" | "scalar"): Kernels {
  const n = loadNative();
  if (n && !n.setSimd(simd)) throw new Error(`--simd ${simd}: this CPU does not support it`);
  return kernels();
}

export function peakRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}
