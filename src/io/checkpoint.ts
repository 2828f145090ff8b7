/**
 * A sharded Hugging Face checkpoint: its `model.safetensors.index.json` (or a lone
 * `model.safetensors`), every shard's validated header, and where each tensor lives.
 */
import { posix } from "node:path";
import { DeepcastError } from "../errors.js";
import { blockScaleRules, E8M0_SCALE_SUFFIX, weightOfBlockScale, type BlockScaleRule } from "../formats/block-scales.js";
import { FP4_GROUP } from "../formats/fp4.js";
import type { SafetensorsHeader, TensorEntry } from "./safetensors.js";
import type { CheckpointSource, SourceFile } from "./source.js";

export const INDEX_FILE = "model.safetensors.index.json";

export interface TensorLocation {
  file: string;
  entry: TensorEntry;
}

export interface Checkpoint {
  source: CheckpointSource;
  files: SourceFile[];
  /** Shard file names, sorted by name. */
  shards: string[];
  headers: Map<string, SafetensorsHeader>;
  /** The index's weight_map in its original order (or built from headers when there is no index). */
  weightMap: Map<string, string>;
  /** The parsed index, when the checkpoint has one. */
  index: { metadata?: Record<string, unknown>; weight_map: Record<string, string> } | null;
  config: Record<string, unknown> | null;
}

/** A shard name from an index must be a plain file name: no directories, no `..`, not absolute. */
export function checkShardName(name: unknown, indexFile: string): string {
  if (typeof name !== "string" || name.length === 0 || name.includes("/") || name.includes("\\") ||
      name === "." || name === ".." || posix.isAbsolute(name) || name.includes("\0")) {
    throw new DeepcastError(`index names an invalid shard file ${JSON.stringify(name)}: shard names must be plain file names`, { file: indexFile });
  }
  return name;
}

async function readJson(source: CheckpointSource, name: string): Promise<unknown> {
  const text = (await source.readFile(name)).toString("utf8");
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new DeepcastError(`invalid JSON: ${(e as Error).message}`, { file: `${source.description}/${name}` });
  }
}

export async function loadCheckpoint(source: CheckpointSource): Promise<Checkpoint> {
  const files = await source.listFiles();
  const present = new Map(files.map((f) => [f.name, f]));
  const where = (name: string) => `${source.description}/${name}`;

  const config = present.has("config.json") ? (await readJson(source, "config.json")) as Record<string, unknown> : null;

  let index: Checkpoint["index"] = null;
  const weightMap = new Map<string, string>();
  let shards: string[];
  if (present.has(INDEX_FILE)) {
    const raw = await readJson(source, INDEX_FILE);
    const wm = (raw as { weight_map?: unknown } | null)?.weight_map;
    if (!wm || typeof wm !== "object" || Array.isArray(wm)) {
      throw new DeepcastError("index has no weight_map object", { file: where(INDEX_FILE) });
    }
    index = raw as NonNullable<Checkpoint["index"]>;
    for (const [tensor, shard] of Object.entries(wm as Record<string, unknown>)) {
      weightMap.set(tensor, checkShardName(shard, where(INDEX_FILE)));
    }
    shards = [...new Set(weightMap.values())].sort();
    for (const s of shards) {
      if (!present.has(s)) {
        const tensor = [...weightMap].find(([, f]) => f === s)?.[0];
        const kind = await source.notAFile?.(s);
        if (kind) throw new DeepcastError(`shard ${s} named by the index is ${kind}, not a regular file`, { file: where(s), tensor, code: "NOT_A_FILE" });
        throw new DeepcastError(`index names shard ${s}, which does not exist`, { file: where(INDEX_FILE), tensor, code: "NOT_FOUND" });
      }
    }
  } else {
    shards = files.filter((f) => f.name.endsWith(".safetensors")).map((f) => f.name).sort();
    if (shards.length === 0) {
      throw new DeepcastError(`no ${INDEX_FILE} and no *.safetensors files`, { file: source.description });
    }
  }

  const headers = new Map<string, SafetensorsHeader>();
  for (const s of shards) headers.set(s, await source.readHeader(s));

  if (index) {
    for (const [tensor, shard] of weightMap) {
      if (!headers.get(shard)!.byName.has(tensor)) {
        throw new DeepcastError(`index places this tensor in ${shard}, but that shard does not contain it`, { file: where(shard), tensor });
      }
    }
  }
  // Tensors a shard holds but the index does not list are still part of the checkpoint
  // (fp8_cast_bf16.py converts whatever the shards contain); a name in two shards is ambiguous.
  const seen = new Map<string, string>();
  for (const s of shards) {
    for (const t of headers.get(s)!.tensors) {
      const other = seen.get(t.name);
      if (other) throw new DeepcastError(`tensor appears in both ${other} and ${s}`, { file: where(s), tensor: t.name });
      seen.set(t.name, s);
      if (!weightMap.has(t.name)) weightMap.set(t.name, s);
    }
  }
  const ckpt = { source, files, shards, headers, weightMap, index, config };
  checkFp8Scales(ckpt);
  return ckpt;
}

/** A weight's block scale: which rule it follows and where the scale is. */
export interface BlockScale {
  rule: BlockScaleRule;
  loc: TensorLocation;
}

/** The block scale of `weight` (FP8 with `_scale_inv` or `.scale`, packed FP4 with `.scale`), if any. */
export function blockScaleOf(ckpt: Checkpoint, weight: string): BlockScale | undefined {
  const w = locate(ckpt, weight);
  if (!w) return undefined;
  for (const rule of blockScaleRules(weight, w.entry.dtype, w.entry.shape)) {
    const loc = locate(ckpt, rule.scale);
    if (loc) return { rule, loc };
  }
  return undefined;
}

/**
 * Every quantized weight has a scale of the right dtype and grid, and every scale belongs to such a
 * weight: FP8 e4m3 with an F32 `_scale_inv` (V3.x) or an E8M0 `.scale` (V4) on the 128x128 tile grid,
 * packed FP4 (I8) with an E8M0 `.scale` per 32 elements of a row (V4 experts). Checked once for every
 * command, so none reads I32 bits as floats or copies a U8 "FP8" weight raw.
 */
export function checkFp8Scales(ckpt: Checkpoint): void {
  const where = (f: string) => `${ckpt.source.description}/${f}`;
  for (const [name, file] of ckpt.weightMap) {
    const loc = locate(ckpt, name)!;
    const of = weightOfBlockScale(name);
    if (of !== null) {
      const weight = locate(ckpt, of);
      if (weight && weight.entry.dtype !== "F8_E4M3" && !(weight.entry.dtype === "I8" && name.endsWith(E8M0_SCALE_SUFFIX))) {
        throw new DeepcastError(`${weight.entry.dtype} weight carries a block scale ${name}: only F8_E4M3 (and, with a .scale, packed FP4 I8) weights have one`, { file: where(weight.file), tensor: weight.entry.name, code: "BAD_SCALE" });
      }
      if (weight) continue;
    }
    if (loc.entry.dtype === "F8_E8M0") {
      throw new DeepcastError(`F8_E8M0 scale tensor belongs to no weight${of ? ` (no ${of} in the checkpoint)` : " (scales are named <name>.scale beside <name>.weight)"}`, { file: where(file), tensor: name, code: "BAD_SCALE" });
    }
    const rules = blockScaleRules(name, loc.entry.dtype, loc.entry.shape);
    if (loc.entry.dtype !== "F8_E4M3" && !(loc.entry.dtype === "I8" && rules.length > 0)) continue;
    const w = loc.entry;
    const found = blockScaleOf(ckpt, name);
    if (!found) {
      const names = rules.map((r) => r.scale).join(" or ") || `${name}.scale`;
      const what = w.dtype === "I8" ? "packed FP4 (I8) weight" : "FP8 weight";
      throw new DeepcastError(`${what} has no ${names} in the checkpoint: cannot dequantize it`, { file: where(file), tensor: name, code: "BAD_SCALE" });
    }
    if (w.shape.length !== 2) {
      throw new DeepcastError(`${w.dtype === "I8" ? "packed FP4" : "FP8"} weight must be 2-D, found shape ${JSON.stringify(w.shape)}`, { file: where(file), tensor: name, code: "UNSUPPORTED" });
    }
    const { rule, loc: scale } = found;
    const s = scale.entry;
    if (s.dtype !== rule.dtype) {
      throw new DeepcastError(`scale must be ${rule.dtype}, found ${s.dtype}`, { file: where(scale.file), tensor: s.name, code: "BAD_SCALE" });
    }
    if (rule.kind === "fp4-e8m0" && (w.shape[1]! * 2) % FP4_GROUP !== 0) {
      throw new DeepcastError(`packed FP4 weight has ${w.shape[1]! * 2} columns (shape ${JSON.stringify(w.shape)}, two per byte), not a multiple of the ${FP4_GROUP}-element scale group`, { file: where(file), tensor: name, code: "UNSUPPORTED" });
    }
    const expected = rule.shape;
    if (s.shape.length !== 2 || s.shape[0] !== expected[0] || s.shape[1] !== expected[1]) {
      throw new DeepcastError(
        `scale shape ${JSON.stringify(s.shape)} does not match weight ${JSON.stringify(w.shape)} (${w.dtype}): expected ${JSON.stringify(expected)} (${rule.grid})`,
        { file: where(scale.file), tensor: s.name, code: "BAD_SCALE" });
    }
  }
}

/** What identifies the input for resume fingerprints: every shard's name, version and tensor layout. */
export async function checkpointIdentity(ckpt: Checkpoint): Promise<unknown[]> {
  const inputs = [];
  for (const s of ckpt.shards) {
    inputs.push([s, await ckpt.source.fileIdentity(s), ckpt.headers.get(s)!.tensors.map((t) => [t.name, t.dtype, t.shape, t.begin])]);
  }
  return inputs;
}

export function locate(ckpt: Checkpoint, tensor: string): TensorLocation | undefined {
  const file = ckpt.weightMap.get(tensor);
  if (!file) return undefined;
  const entry = ckpt.headers.get(file)?.byName.get(tensor);
  return entry ? { file, entry } : undefined;
}
