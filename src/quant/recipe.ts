/**
 * Recipe files (`to-gguf --recipe FILE`): llama-quantize's `--tensor-type-file` syntax, so published
 * recipes run as they are: whitespace-separated `REGEX=TYPE` entries (spaces or newlines), each parsed
 * as a `--tensor-type` (pattern lower-cased, type a ggml type name, case-insensitive), applied in
 * order, first match wins. There is no comment syntax (llama-quantize has none either).
 */
import { readFile } from "node:fs/promises";
import { DeepcastError } from "../errors.js";
import type { GgmlType } from "../formats/ggml-types.js";
import { parseTensorTypeOverride, type TensorTypeOverride } from "./mix.js";

/** Parses recipe text; `file` names the file in errors. */
export function parseRecipe(text: string, file: string): TensorTypeOverride[] {
  const out: TensorTypeOverride[] = [];
  for (const token of text.split(/\s+/).filter((x) => x.length > 0)) {
    try {
      out.push(parseTensorTypeOverride(token));
    } catch (e) {
      if (e instanceof DeepcastError) throw new DeepcastError(`recipe entry ${JSON.stringify(token)}: ${e.message}`, { file, code: "USAGE" });
      throw e;
    }
  }
  return out;
}

export async function readRecipe(path: string): Promise<TensorTypeOverride[]> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw new DeepcastError(`cannot read the recipe: ${(e as Error).message}`, { file: path, code: "NOT_FOUND" }, { cause: e });
  }
  return parseRecipe(text, path);
}

/** An anchored pattern that matches exactly this tensor name (and survives llama-quantize's lower-casing). */
export function exactNamePattern(name: string): string {
  return `^${name.toLowerCase().replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`;
}

/** A recipe that gives each tensor exactly its type: one `^name$=type` line per tensor, in order. */
export function formatRecipe(entries: readonly { name: string; type: GgmlType }[]): string {
  return entries.map((e) => `${exactNamePattern(e.name)}=${e.type.ggmlName}\n`).join("");
}
