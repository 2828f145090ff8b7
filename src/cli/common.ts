/** Options and the run scaffolding shared by every command: progress, interruption, summaries. */
import { availableParallelism } from "node:os";
import type { Argv } from "yargs";
import { kernels, type Kernels } from "../quant/kernels.js";
import { loadNative } from "../quant/native.js";
import { VERSION } from "../version.js";
import { describePlan, type PlanDescription } from "../io/dry-run.js";
import { progressView, type ProgressOptions, type ProgressView } from "./progress.js";

export function withCommonOptions<T>(y: Argv<T>) {
  return y
    .option("threads", { type: "number", default: availableParallelism(), describe: "Compute threads for the native kernels" })
    .option("json", { type: "boolean", default: false, describe: "Print a machine-readable summary on stdout" })
    .option("dry-run", { type: "boolean", default: false, describe: "Show what would be written (files, sizes, free disk) without writing" })
    .option("force", { type: "boolean", default: false, describe: "Overwrite an existing output that holds something else" })
    .option("simd", { choices: ["auto", "avx2", "scalar"] as const, default: "auto" as const, describe: "SIMD level of the native kernels (all give identical bytes)" })
    .option("revision", { type: "string", default: "main", describe: "Hub revision (branch, tag or commit) for a repo id" })
    .option("skip-space-check", { type: "boolean", default: false, describe: "Do not refuse to start when the disk looks too small" });
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

/**
 * Runs `body` with a progress view on stderr (its `onEvent` goes to the run and to a Hub source's
 * downloads). Ctrl-C or SIGTERM stops at once (exit 130) with a word on how to resume: outputs are
 * only ever complete under their final names.
 */
export async function withProgress<T>(opts: ProgressOptions & { resumeHint: string }, body: (progress: ProgressView) => Promise<T>): Promise<T> {
  const progress = progressView(opts);
  const onSignal = () => {
    progress.stop();
    process.stderr.write(`\ninterrupted: ${opts.resumeHint}\n`);
    process.exit(130);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    return await body(progress);
  } finally {
    progress.stop();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

/** Prints a command's result: JSON on stdout with --json, else one human line on stderr. */
export function printResult(json: boolean, result: object, human: string): void {
  if (json) printJson(result);
  else process.stderr.write(human + "\n");
}

/** Writes a --json summary on stdout, with the deepcast version that made it. */
export function printJson(result: object): void {
  process.stdout.write(JSON.stringify({ version: VERSION, ...result }, null, 2) + "\n");
}

/** Fields every run summary carries: timing, memory, and which kernels ran. */
export function runFacts(started: number, k: Kernels, threads: number) {
  return {
    seconds: (performance.now() - started) / 1000,
    peakRssBytes: peakRssBytes(),
    backend: k.backend,
    simd: k.simd(),
    threads,
  };
}

/** --dry-run: the plan's report as JSON on stdout with --json, else as text on stdout. */
export async function printDryRun(json: boolean, plan: PlanDescription): Promise<void> {
  const report = await describePlan(plan);
  if (json) printJson(report.json);
  else process.stdout.write(report.text + "\n");
}
