/**
 * Text to token ids for `validate`: the checkpoint's own `tokenizer.json` + `tokenizer_config.json`
 * run through @huggingface/tokenizers, offline (the parsed JSON is handed over; nothing is fetched).
 *
 * `encode` returns the ids of the text alone (add_special_tokens false, as the fixture's
 * `kjv_eval.ids.json` was made); where BOS goes is the evaluation protocol's business, so the
 * tokenizer reports `bosId` and `addBos` (tokenizer_config's add_bos_token; DeepSeek-V3 adds BOS
 * id 0, `<｜begin▁of▁sentence｜>`).
 *
 * Token files (`--tokens FILE.json`) hold the same thing: the text's ids without BOS, as a JSON array
 * or an object with an `ids` array (an object with `"bos_prepended": true` has its leading BOS dropped).
 */
import { readFile, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { DeepcastError } from "../errors.js";

export interface TextTokenizer {
  /** The folder the tokenizer files came from (for messages). */
  readonly description: string;
  /** BOS id, or null when the tokenizer has none. */
  readonly bosId: number | null;
  /** Whether the model expects BOS at the start of a sequence (tokenizer_config add_bos_token). */
  readonly addBos: boolean;
  /** Ids of `text` alone, no special tokens added. */
  encode(text: string): number[];
  decode(ids: readonly number[]): string;
}

type Json = Record<string, unknown>;

function tokenContent(t: unknown): string | null {
  if (typeof t === "string") return t;
  if (t && typeof t === "object" && typeof (t as Json).content === "string") return (t as Json).content as string;
  return null;
}

/**
 * A tokenizer from parsed `tokenizer.json` and `tokenizer_config.json` objects. `fallbackBos` (the
 * model config's bos_token_id) is used when tokenizer_config names no BOS token.
 */
export function tokenizerFromJson(tokenizerJson: unknown, tokenizerConfig: unknown, opts: { description?: string; fallbackBos?: number } = {}): TextTokenizer {
  const description = opts.description ?? "tokenizer.json";
  if (!tokenizerJson || typeof tokenizerJson !== "object") throw new DeepcastError("tokenizer.json is not a JSON object", { file: description });
  const cfg = (tokenizerConfig && typeof tokenizerConfig === "object" ? tokenizerConfig : {}) as Json;
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(tokenizerJson, cfg);
  } catch (e) {
    throw new DeepcastError(`cannot build the tokenizer: ${(e as Error).message}`, { file: description }, { cause: e });
  }
  const bosText = tokenContent(cfg.bos_token);
  let bosId: number | null = null;
  if (bosText !== null) {
    const id = tok.token_to_id(bosText);
    if (id === undefined) throw new DeepcastError(`tokenizer_config.json names bos_token ${JSON.stringify(bosText)}, which tokenizer.json does not have`, { file: description });
    bosId = id;
  } else if (opts.fallbackBos !== undefined) {
    bosId = opts.fallbackBos;
  }
  // LlamaTokenizerFast (DeepSeek-V3's class) defaults add_bos_token to true.
  const addBos = bosId !== null && (cfg.add_bos_token === undefined ? true : Boolean(cfg.add_bos_token));
  return {
    description,
    bosId,
    addBos,
    encode: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    decode: (ids) => tok.decode([...ids], { skip_special_tokens: false }),
  };
}

async function readJson(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    throw new DeepcastError(`cannot read: ${(e as Error).message}`, { file });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new DeepcastError(`not valid JSON: ${(e as Error).message}`, { file });
  }
}

async function isFile(p: string): Promise<boolean> {
  return (await stat(p).catch(() => null))?.isFile() ?? false;
}

/** The folder holding a model's tokenizer: the model folder itself, or the folder of a model file (a .gguf). */
export async function tokenizerDirOf(modelPath: string): Promise<string> {
  const s = await stat(modelPath).catch(() => null);
  return s?.isDirectory() ? modelPath : dirname(modelPath);
}

/** Whether `dir` has a tokenizer.json. */
export async function hasTokenizer(dir: string): Promise<boolean> {
  return isFile(join(dir, "tokenizer.json"));
}

/** Loads `dir/tokenizer.json` (+ `dir/tokenizer_config.json` when present). */
export async function loadTokenizer(dir: string, opts: { fallbackBos?: number } = {}): Promise<TextTokenizer> {
  const tj = join(dir, "tokenizer.json");
  if (!(await isFile(tj))) throw new DeepcastError("no tokenizer.json here", { file: dir });
  const tc = join(dir, "tokenizer_config.json");
  const config = (await isFile(tc)) ? await readJson(tc) : {};
  return tokenizerFromJson(await readJson(tj), config, { description: tj, fallbackBos: opts.fallbackBos });
}

/**
 * The first of `places` (folders or model files, in order of preference) that has a tokenizer.json
 * (beside it, for a file), or null.
 */
export async function findTokenizerDir(places: readonly (string | undefined)[]): Promise<string | null> {
  for (const p of places) {
    if (!p) continue;
    const dir = await tokenizerDirOf(p);
    if (await hasTokenizer(dir)) return dir;
  }
  return null;
}

/**
 * Token ids from a JSON file: an array of ids, or an object with an `ids` array. With
 * `"bos_prepended": true` in the object, the leading id (BOS) is dropped: the result is always the
 * text's ids without BOS.
 */
export async function readTokenIds(file: string): Promise<number[]> {
  const raw = await readJson(file);
  let ids: unknown = raw;
  let bosPrepended = false;
  if (raw && typeof raw === "object" && !Array.isArray(raw)) {
    ids = (raw as Json).ids;
    bosPrepended = (raw as Json).bos_prepended === true;
    if (!Array.isArray(ids)) throw new DeepcastError('expected a JSON array of token ids or an object with an "ids" array', { file });
  }
  if (!Array.isArray(ids)) throw new DeepcastError('expected a JSON array of token ids or an object with an "ids" array', { file });
  for (let i = 0; i < ids.length; i++) {
    const v = ids[i] as unknown;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
      throw new DeepcastError(`ids[${i}] is ${JSON.stringify(v)}, not a non-negative integer token id`, { file });
    }
  }
  return (bosPrepended ? ids.slice(1) : ids) as number[];
}
