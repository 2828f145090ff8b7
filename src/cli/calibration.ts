/**
 * `to-gguf --calibration TEXT`: the importance matrix first (deepcast imatrix from the same input),
 * kept beside the output as `<output>.imatrix.gguf`, then the quantization with it. Resumable like the
 * rest: the imatrix is written atomically, and a rerun reuses a complete one made from the same text,
 * ctx and chunk count (delete it to recompute); the quantizing pass resumes from its own run record.
 */
import { readImatrix } from "../io/imatrix.js";
import { makeImatrix } from "./imatrix.js";

export interface CalibrationOptions {
  model: string;
  text: string;
  output: string;
  ctx: number;
  chunks?: number;
  budget: number;
  threads: number;
  revision?: string;
  dryRun: boolean;
}

/** Where the first pass keeps its imatrix: `x.gguf` -> `x.imatrix.gguf`. */
export function calibrationImatrixPath(output: string): string {
  return output.replace(/\.gguf$/i, "") + ".imatrix.gguf";
}

/** The imatrix to quantize with (null in a dry run that would still have to make it), computing it when needed. */
export async function calibrationImatrix(o: CalibrationOptions): Promise<{ path: string; reused: boolean; made: Record<string, unknown> | null } | null> {
  const path = calibrationImatrixPath(o.output);
  const old = await readImatrix(path).catch(() => null);
  if (old && old.format === "gguf" && old.datasets.length === 1 && old.datasets[0] === o.text && old.chunkSize === o.ctx &&
      (o.chunks === undefined || old.chunkCount === o.chunks)) {
    process.stderr.write(`calibration: reusing ${path} (${old.chunkCount} chunks of ${old.chunkSize} from ${o.text})\n`);
    return { path, reused: true, made: null };
  }
  const { report, summary } = await makeImatrix({
    model: o.model, text: o.text, output: path, format: "gguf", ctx: o.ctx, chunks: o.chunks, processOutput: false, ppl: true,
    budget: o.budget, threads: o.threads, revision: o.revision, force: true, dryRun: o.dryRun,
  });
  process.stderr.write(`calibration: ${summary}\n`);
  return o.dryRun ? null : { path, reused: false, made: report };
}
