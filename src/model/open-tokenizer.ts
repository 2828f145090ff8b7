/**
 * Which tokenizer a model's text goes through, for every command that tokenizes (validate, imatrix):
 * a tokenizer.json beside the model (or in the model folder) first, as the checkpoint ships it;
 * else, for a GGUF, the tokenizer rebuilt from its own `tokenizer.ggml.*` metadata, as llama.cpp's
 * tools use it.
 */
import { stat } from "node:fs/promises";
import { dirname } from "node:path";
import { DeepcastError } from "../errors.js";
import { HubSource, isHubRepoId } from "../io/hub.js";
import { loadGgufTokenizer } from "./tokenizer-from-gguf.js";
import { findTokenizerDir, loadTokenizer, type TextTokenizer } from "./tokenize.js";

const isGgufPath = (p: string) => /\.gguf$/i.test(p);

/**
 * The tokenizer for the first of `places` (folders or model files, in order of preference) that has
 * one: a tokenizer.json beside any of them wins; else the first .gguf among them gives its metadata's.
 * Null when none has a tokenizer.
 */
export async function findTokenizer(places: readonly (string | undefined)[], opts: { fallbackBos?: number; revision?: string } = {}): Promise<TextTokenizer | null> {
  const dir = await findTokenizerDirOrHub(places, opts);
  if (dir) return loadTokenizer(dir, opts);
  const gguf = places.find((p): p is string => p !== undefined && isGgufPath(p));
  return gguf ? loadGgufTokenizer(gguf) : null;
}

/**
 * The tokenizer of one model (a checkpoint folder, a model file, a .gguf of any split), or a
 * DeepcastError naming the path when it has none.
 */
export async function openTokenizer(modelPath: string, opts: { fallbackBos?: number } = {}): Promise<TextTokenizer> {
  const tok = await findTokenizer([modelPath], opts);
  if (!tok) throw new DeepcastError("no tokenizer.json here or beside it (and not a GGUF, whose metadata carries one)", { file: modelPath });
  return tok;
}

/**
 * For a Hugging Face repo id (not a local path): the snapshot folder of its tokenizer files, fetched
 * into the HF cache (or found there offline), or null when `spec` is no repo id or the repo has no
 * tokenizer.json.
 */
export async function hubTokenizerDir(spec: string, opts: { revision?: string } = {}): Promise<string | null> {
  if (!isHubRepoId(spec) || (await stat(spec).catch(() => null))) return null;
  const hub = new HubSource(spec, opts.revision !== undefined ? { revision: opts.revision } : {});
  const names = new Set((await hub.listFiles()).map((f) => f.name));
  if (!names.has("tokenizer.json")) return null;
  const path = await hub.localPath("tokenizer.json");
  if (names.has("tokenizer_config.json")) await hub.localPath("tokenizer_config.json");
  return dirname(path);
}

/** findTokenizerDir, then the first repo id among `places` that has a tokenizer. */
export async function findTokenizerDirOrHub(places: readonly (string | undefined)[], opts: { revision?: string } = {}): Promise<string | null> {
  const dir = await findTokenizerDir(places);
  if (dir) return dir;
  for (const p of places) {
    const hub = p === undefined ? null : await hubTokenizerDir(p, opts);
    if (hub) return hub;
  }
  return null;
}
