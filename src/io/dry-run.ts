/**
 * --dry-run for every command: what a run would read and write, and whether it fits on the disk, as
 * one JSON report and as text. Each command supplies its plan's facts (`PlanDescription`); the free
 * space, the fit and the common lines are computed here.
 */
import { fmtBytes } from "../units.js";
import { freeBytes } from "./write.js";

export interface PlanDescription {
  command: string;
  /** The input as given (folder or repo id). */
  input: string;
  /** Where the output goes (the free space is looked up there), or null when nothing is written. */
  output: string | null;
  /** Command-specific report fields, in order. */
  fields: Record<string, unknown>;
  /** Command-specific text lines, printed before the common totals. */
  lines: string[];
  /** Bytes the run reads, when known. */
  inputBytes?: number;
  /** Bytes the run writes. */
  outputBytes: number;
}

export interface DryRunReport {
  /** command, input, output, the command's fields, inputBytes, outputBytes, freeBytes, fits. */
  json: Record<string, unknown>;
  text: string;
  fits: boolean;
}

/** The dry-run report of a plan. */
export async function describePlan(d: PlanDescription): Promise<DryRunReport> {
  const free = d.output === null ? Number.POSITIVE_INFINITY : await freeBytes(d.output);
  const fits = d.outputBytes <= free;
  const json: Record<string, unknown> = {
    command: d.command,
    input: d.input,
    ...(d.output !== null ? { output: d.output } : {}),
    ...d.fields,
    ...(d.inputBytes !== undefined ? { inputBytes: d.inputBytes } : {}),
    outputBytes: d.outputBytes,
    freeBytes: Number.isFinite(free) ? free : null,
    fits,
  };
  const totals = d.output === null
    ? []
    : [`${d.inputBytes !== undefined ? `read ${fmtBytes(d.inputBytes)}, ` : ""}write ${fmtBytes(d.outputBytes)}; free at ${d.output}: ${fmtBytes(free)}${fits ? "" : "  (NOT ENOUGH)"}`];
  return { json, text: [...d.lines, ...totals].join("\n"), fits };
}
