import type { Argv, ArgumentsCamelCase } from "yargs";
import { inspect, type InspectReport } from "../io/inspect.js";
import { fmtBytes } from "../units.js";
import { printJson, withCommonOptions } from "./common.js";

export const command = "inspect <path>";
export const describe = "Show what a GGUF, a safetensors checkpoint (folder or repo id) or an imatrix holds: metadata, tensors, totals per type (headers only)";

export function builder(y: Argv) {
  return withCommonOptions(
    y.positional("path", { type: "string", demandOption: true, describe: ".gguf (any file of a split), imatrix (.gguf/.dat), .safetensors file, checkpoint folder or HF repo id" }),
  ).epilogue(
    "Reads headers only (safetensors headers of a repo id by HTTP Range requests), so a 671B checkpoint takes seconds. " +
      "GGUF shapes are in ggml order (ne[0], the contiguous dimension, first), as gguf-dump prints them; safetensors shapes " +
      "in PyTorch order. Long metadata arrays are shown by element type, length and first values. --json prints the whole " +
      "report (metadata, every tensor, totals per type) on stdout.",
  );
}

type Args = ArgumentsCamelCase<ReturnType<typeof builder> extends Argv<infer T> ? T : never>;

const params = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}K` : String(n));

function showValue(v: unknown): string {
  if (v && typeof v === "object" && !Array.isArray(v) && "array" in v && "length" in v) {
    const a = v as { array: string; length: number; head: unknown[] };
    return `[${a.array} x ${a.length}] ${a.head.map((x) => JSON.stringify(x)).join(", ")}, ...`;
  }
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 200 ? `${s.slice(0, 200)}... (${s.length} characters)` : s;
}

/** The report as text, like gguf-dump: header, metadata, tensor table, totals. */
export function formatReport(r: InspectReport): string {
  const out: string[] = [];
  out.push(`${r.path}: ${r.container}, ${r.files.length} file(s), ${r.tensorCount} tensors, ${fmtBytes(r.totalBytes)} of tensor data, ${params(r.totalParams)} parameters`);
  if (r.files.length > 1) for (const f of r.files) out.push(`  ${f.file}  ${f.tensors} tensors  ${fmtBytes(f.bytes)}`);
  out.push("", `metadata (${Object.keys(r.metadata).length} entries):`);
  for (const [k, v] of Object.entries(r.metadata)) out.push(`  ${k} = ${showValue(v)}`);
  const nameW = Math.max(4, ...r.tensors.map((t) => t.name.length));
  const shapes = r.tensors.map((t) => JSON.stringify(t.shape));
  const shapeW = Math.max(5, ...shapes.map((s) => s.length));
  out.push("", `tensors (${r.tensorCount}; shape in ${r.shapeOrder === "ggml" ? "ggml order, ne[0] first" : "row-major order"}):`);
  out.push(`  ${"name".padEnd(nameW)}  ${"type".padEnd(8)}  ${"shape".padEnd(shapeW)}  ${"bytes".padStart(14)}  file`);
  r.tensors.forEach((t, i) => out.push(`  ${t.name.padEnd(nameW)}  ${t.type.padEnd(8)}  ${shapes[i]!.padEnd(shapeW)}  ${String(t.bytes).padStart(14)}  ${t.file}`));
  out.push("", "totals per type:");
  for (const [type, e] of Object.entries(r.types).sort((a, b) => b[1].bytes - a[1].bytes)) {
    out.push(`  ${type.padEnd(8)}  ${String(e.tensors).padStart(7)} tensors  ${fmtBytes(e.bytes).padStart(10)}  ${params(e.params).padStart(9)} parameters`);
  }
  out.push(`  ${"total".padEnd(8)}  ${String(r.tensorCount).padStart(7)} tensors  ${fmtBytes(r.totalBytes).padStart(10)}  ${params(r.totalParams).padStart(9)} parameters`);
  return out.join("\n") + "\n";
}

export async function handler(argv: Args): Promise<void> {
  const report = await inspect(argv.path, { revision: argv.revision });
  if (argv.json) printJson({ command: "inspect", ...report });
  else process.stdout.write(formatReport(report));
}
