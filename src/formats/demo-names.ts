/**
 * formats/demo-names.json: how DeepSeek's inference/convert.py names and splits the tensors of its
 * model-parallel demo shards. Read by the to-demo planner and by the demo-shard weight source.
 */
import { DeepcastError } from "../errors.js";
import { readFormat } from "./load.js";

export interface DemoNamesFormat {
  stripPrefix: string;
  layerPattern: string;
  replace: [string, string][];
  modules: Record<string, { demo: string; split: number | null }>;
  routedExperts: { contains: string; excludes: string; indexComponent: number };
  copyFiles: string;
  outputFile: string;
  modelArgs: { demo: string; hf: string; default?: number | string; optional?: boolean }[];
}

export function demoNamesFormat(): DemoNamesFormat {
  return readFormat<DemoNamesFormat>("demo-names.json");
}

/** convert.py's rename of one HF name: returns the demo name and the module's split dim. */
export function demoName(hfName: string, where: { file?: string } = {}): { name: string; split: number | null } {
  const f = demoNamesFormat();
  let name = hfName.startsWith(f.stripPrefix) ? hfName.slice(f.stripPrefix.length) : hfName;
  for (const [a, b] of f.replace) name = name.replaceAll(a, b);
  const parts = name.split(".");
  const key = parts.length >= 2 ? parts[parts.length - 2]! : undefined;
  const m = key !== undefined && Object.hasOwn(f.modules, key) ? f.modules[key] : undefined;
  if (!key || !m) {
    throw new DeepcastError(
      `no demo name for module ${JSON.stringify(key ?? name)}: DeepSeek's convert.py maps only ${Object.keys(f.modules).join(", ")}`,
      { file: where.file, tensor: hfName });
  }
  return { name: name.replaceAll(key, m.demo), split: m.split };
}

/** The global expert index of a routed-expert demo name, or null for any other tensor. */
export function routedExpertIndex(name: string, hfName: string): number | null {
  const e = demoNamesFormat().routedExperts;
  if (!name.includes(e.contains) || name.includes(e.excludes)) return null;
  const comp = name.split(".").at(e.indexComponent);
  if (comp === undefined || !/^\d+$/.test(comp)) {
    throw new DeepcastError(`routed expert tensor has no expert index where convert.py reads it (component ${e.indexComponent} of ${name})`, { tensor: hfName });
  }
  return Number(comp);
}

export function rankFileName(rank: number, mp: number): string {
  return demoNamesFormat().outputFile.replace("{rank}", String(rank)).replace("{mp}", String(mp));
}
