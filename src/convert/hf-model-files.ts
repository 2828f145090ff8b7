/**
 * What the to-gguf planner reads from a checkpoint: config.json, the tokenizer and generation files
 * parsed, and the safetensors headers (no tensor data).
 */
import { DeepcastError } from "../errors.js";
import { loadCheckpoint, type Checkpoint } from "../io/checkpoint.js";
import type { Dtype } from "../io/dtypes.js";
import { hubCacheModelName } from "../io/hub-cache.js";
import type { CheckpointSource } from "../io/source.js";


export interface HfTensorHeader {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
}

export interface HfShardHeader {
  /** Shard file name, e.g. "model-00001-of-000163.safetensors". */
  file: string;
  tensors: readonly HfTensorHeader[];
}

/** Everything the plan reads from a checkpoint (small files parsed, headers only). */
export interface HfModelFiles {
  /** Name of the model folder ("DeepSeek-V3"): llama.cpp derives general.name and friends from it. */
  dirName?: string;
  config: Record<string, unknown>;
  /** config.json as text (Python's int/float distinction, which JSON.parse loses). */
  configText?: string;
  shards: readonly HfShardHeader[];
  /** tokenizer.json, parsed. */
  tokenizer?: unknown;
  /** tokenizer_config.json, parsed. */
  tokenizerConfig?: unknown;
  /** generation_config.json, parsed (general.sampling.*). */
  generationConfig?: unknown;
  /** chat_template.jinja, when present (used if tokenizer_config.json has no chat_template). */
  chatTemplateJinja?: string;
  /** chat_template.json, parsed, when present. */
  chatTemplateJson?: unknown;
}

/** What the plan reads from an already loaded and validated checkpoint (headers, small files). */
export async function hfModelFiles(ckpt: Checkpoint, dirName?: string): Promise<HfModelFiles> {
  if (!ckpt.config) throw new DeepcastError("config.json is missing", { file: ckpt.source.description });
  const names = new Set(ckpt.files.map((f) => f.name));
  const json = async (name: string) => {
    if (!names.has(name)) return undefined;
    try {
      return JSON.parse((await ckpt.source.readFile(name)).toString("utf8")) as unknown;
    } catch (e) {
      throw new DeepcastError(`malformed JSON: ${(e as Error).message}`, { file: `${ckpt.source.description}/${name}` });
    }
  };
  const jinja = names.has("chat_template.jinja") ? (await ckpt.source.readFile("chat_template.jinja")).toString("utf8") : undefined;
  // A snapshot in the HF cache is named by its commit: the model name is the repo's.
  const dn = dirName ?? hubCacheModelName(ckpt.source.description) ?? ckpt.source.description.replace(/@[^/]*$/, "").replace(/[\\/]+$/, "").split(/[\\/]/).pop();
  return {
    ...(dn ? { dirName: dn } : {}),
    config: ckpt.config,
    ...(names.has("config.json") ? { configText: (await ckpt.source.readFile("config.json")).toString("utf8") } : {}),
    shards: ckpt.shards.map((file) => ({ file, tensors: ckpt.headers.get(file)!.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })) })),
    tokenizer: await json("tokenizer.json"),
    tokenizerConfig: await json("tokenizer_config.json"),
    generationConfig: await json("generation_config.json"),
    ...(jinja !== undefined ? { chatTemplateJinja: jinja } : {}),
    chatTemplateJson: await json("chat_template.json"),
  };
}

/** Loads (and validates) a checkpoint's headers and small files for planning. */
export async function loadHfModelFiles(source: CheckpointSource, dirName?: string): Promise<HfModelFiles> {
  return hfModelFiles(await loadCheckpoint(source), dirName);
}

/** First of `keys` present in the HF config. */
export function findHparam(h: Record<string, unknown>, keys: readonly string[]): unknown {
  for (const k of keys) if (k in h) return h[k];
  return undefined;
}

/** A number config.json must have. */
export function configNumber(h: Record<string, unknown>, key: string, what = key): number {
  const v = h[key];
  if (typeof v !== "number") throw new DeepcastError(`config.json: ${what} is missing or not a number`, { file: "config.json" });
  return v;
}
