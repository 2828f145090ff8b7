/**
 * formats/demo-names-v4.json: how DeepSeek-V4's inference/convert.py names, splits and casts the tensors
 * of its model-parallel demo shards. Read by the V4 to-demo planner (src/convert/demo-plan-v4.ts); the
 * routed-expert rule and the rank file names are V3's (./demo-names.ts).
 */
import type { Dtype } from "../io/dtypes.js";
import { readFormat } from "./load.js";

export type ExpertDtype = "fp4" | "fp8";

export interface DemoNamesV4Format {
  stripPrefix: string;
  skip: { prefix: string; contains: string[]; endsWith: string[] };
  replace: [string, string][];
  lastComponentKeys: string[];
  modules: Record<string, { demo: string; split: number | null }>;
  dequantize: string;
  expertsSubstring: string;
  expertDtypes: Record<ExpertDtype, Dtype>;
  copyFiles: string[];
  modelArgs: { demo: string; hf?: string; rope?: string; optional?: boolean }[];
}

export function demoNamesV4Format(): DemoNamesV4Format {
  return readFormat<DemoNamesV4Format>("demo-names-v4.json");
}

/**
 * convert.py's rename of one V4 name: the demo name and the split dim (null: replicated), or null when
 * convert.py leaves the tensor out (the MTP module's own embedding or head).
 */
export function demoNameV4(hfName: string): { name: string; split: number | null } | null {
  const f = demoNamesV4Format();
  let name = hfName.startsWith(f.stripPrefix) ? hfName.slice(f.stripPrefix.length) : hfName;
  if (name.startsWith(f.skip.prefix) && (f.skip.contains.some((s) => name.includes(s)) || f.skip.endsWith.some((s) => name.endsWith(s)))) return null;
  for (const [a, b] of f.replace) name = name.replaceAll(a, b);
  const parts = name.split(".");
  const key = f.lastComponentKeys.some((k) => name.includes(k)) ? parts.at(-1)! : (parts.at(-2) ?? parts.at(-1)!);
  const m = Object.hasOwn(f.modules, key) ? f.modules[key]! : { demo: key, split: null };
  return { name: name.replaceAll(key, m.demo), split: m.split };
}
