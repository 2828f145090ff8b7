/**
 * The text tokenizer of a GGUF alone: the `tokenizer.ggml.*` metadata (what llama.cpp's converter
 * wrote from tokenizer.json) turned back into a tokenizer.json-shaped object and run through the
 * same @huggingface/tokenizers code as a checkpoint's own tokenizer.json (./tokenize.ts).
 *
 * Supported: `tokenizer.ggml.model` "gpt2" (byte-level BPE) with `tokenizer.ggml.pre` "deepseek-v3",
 * the DeepSeek-V3 family's vocabulary. The rebuilt tokenizer.json has:
 * - pre_tokenizer: the three Split regexes of DeepSeek-V3's tokenizer.json (the same ones llama.cpp's
 *   LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM uses), then ByteLevel without its own regex;
 * - model: BPE over `tokenizer.ggml.tokens` (every token but the converter's `[PAD…]` fillers,
 *   token type 5) and `tokenizer.ggml.merges`;
 * - added_tokens: control tokens (type 3) as special, user-defined ones (type 4) as plain added tokens;
 * - decoder: ByteLevel.
 * BOS comes from `tokenizer.ggml.bos_token_id`; whether it is added from `tokenizer.ggml.add_bos_token`
 * (llama.cpp's default for this pre-tokenizer, when the key is absent, is not to add it).
 */
import { DeepcastError } from "../errors.js";
import { GgufReader } from "../io/gguf-reader.js";
import type { GgufKV } from "../io/gguf-kv.js";
import { tokenizerFromJson, type TextTokenizer } from "./tokenize.js";

/** llama.cpp's llama_token_type values (tokenizer.ggml.token_type). */
const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/** Pre-tokenizers per `tokenizer.ggml.pre`, as the model's tokenizer.json spells them. */
const PRE_TOKENIZERS: Record<string, object> = {
  "deepseek-v3": {
    type: "Sequence",
    pretokenizers: [
      { type: "Split", pattern: { Regex: "\\p{N}{1,3}" }, behavior: "Isolated", invert: false },
      { type: "Split", pattern: { Regex: "[一-龥぀-ゟ゠-ヿ]+" }, behavior: "Isolated", invert: false },
      {
        type: "Split",
        pattern: {
          Regex:
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
        },
        behavior: "Isolated",
        invert: false,
      },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  },
};

/** The tokenizer pre-tokenizer names this module can rebuild. */
export const GGUF_PRE_TOKENIZERS = Object.keys(PRE_TOKENIZERS);

/** What a tokenizer.json + tokenizer_config.json pair would hold for this metadata. */
export interface RebuiltTokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
}

type KvLookup = (key: string) => GgufKV | undefined;

function stringArray(get: KvLookup, key: string, file: string, required: boolean): string[] | null {
  const e = get(key);
  if (!e) {
    if (required) throw new DeepcastError(`the GGUF has no ${key}: no tokenizer can be rebuilt from it`, { file });
    return null;
  }
  if (e.type !== "ARRAY" || e.elementType !== "STRING") throw new DeepcastError(`${key} must be an array of strings`, { file });
  return e.value as string[];
}

function scalar(get: KvLookup, key: string, file: string, kind: "string" | "number" | "boolean"): string | number | boolean | undefined {
  const e = get(key);
  if (!e) return undefined;
  if (e.type === "ARRAY" || typeof e.value !== kind) throw new DeepcastError(`${key} must be a ${kind === "number" ? "integer" : kind}`, { file });
  return e.value as string | number | boolean;
}

/**
 * tokenizer.json / tokenizer_config.json objects from GGUF metadata (`get` looks a key up). Throws
 * a DeepcastError naming `file` when the metadata is missing, malformed or of an unsupported kind.
 */
export function tokenizerFilesFromGguf(get: KvLookup, file: string): RebuiltTokenizerFiles {
  const model = scalar(get, "tokenizer.ggml.model", file, "string");
  if (model === undefined) throw new DeepcastError("the GGUF has no tokenizer.ggml.model: no tokenizer can be rebuilt from it", { file });
  if (model !== "gpt2") throw new DeepcastError(`tokenizer.ggml.model is ${JSON.stringify(model)}; only "gpt2" (byte-level BPE, DeepSeek-V3's) can be rebuilt`, { file });
  const pre = scalar(get, "tokenizer.ggml.pre", file, "string");
  const preTokenizer = typeof pre === "string" ? PRE_TOKENIZERS[pre] : undefined;
  if (!preTokenizer) {
    throw new DeepcastError(
      `tokenizer.ggml.pre is ${pre === undefined ? "missing" : JSON.stringify(pre)}; the tokenizer can be rebuilt for ${GGUF_PRE_TOKENIZERS.map((p) => JSON.stringify(p)).join(", ")}: ` +
        "give --tokenizer DIR (a folder with the model's tokenizer.json) or token ids with --tokens FILE.json",
      { file },
    );
  }
  const tokens = stringArray(get, "tokenizer.ggml.tokens", file, true)!;
  const merges = stringArray(get, "tokenizer.ggml.merges", file, true)!;
  const typesKv = get("tokenizer.ggml.token_type");
  let types: readonly number[];
  if (!typesKv) types = tokens.map(() => TOKEN_TYPE.NORMAL);
  else if (typesKv.type !== "ARRAY" || typesKv.value.some((t) => typeof t !== "number")) throw new DeepcastError("tokenizer.ggml.token_type must be an array of integers", { file });
  else types = typesKv.value as number[];
  if (types.length !== tokens.length) throw new DeepcastError(`tokenizer.ggml.token_type has ${types.length} entries, tokenizer.ggml.tokens ${tokens.length}`, { file });

  const vocab: Record<string, number> = {};
  const added: Record<string, unknown>[] = [];
  for (let id = 0; id < tokens.length; id++) {
    const t = tokens[id]!;
    const type = types[id]!;
    if (type === TOKEN_TYPE.UNUSED) continue;
    if (Object.hasOwn(vocab, t)) throw new DeepcastError(`tokenizer.ggml.tokens has ${JSON.stringify(t)} twice (ids ${vocab[t]} and ${id})`, { file });
    vocab[t] = id;
    if (type === TOKEN_TYPE.CONTROL || type === TOKEN_TYPE.USER_DEFINED) {
      const special = type === TOKEN_TYPE.CONTROL;
      added.push({ id, content: t, single_word: false, lstrip: false, rstrip: false, normalized: !special, special });
    }
  }
  for (const [i, m] of merges.entries()) {
    const parts = m.split(" ");
    if (parts.length !== 2 || !parts[0] || !parts[1]) throw new DeepcastError(`tokenizer.ggml.merges[${i}] is ${JSON.stringify(m)}, not two tokens separated by one space`, { file });
  }

  const idKey = (key: string): number | undefined => {
    const v = scalar(get, key, file, "number") as number | undefined;
    if (v === undefined) return undefined;
    if (!Number.isInteger(v) || v < 0 || v >= tokens.length) throw new DeepcastError(`${key} is ${v}, outside the ${tokens.length} tokens`, { file });
    return v;
  };
  const bos = idKey("tokenizer.ggml.bos_token_id");
  const eos = idKey("tokenizer.ggml.eos_token_id");
  const addBos = scalar(get, "tokenizer.ggml.add_bos_token", file, "boolean") ?? false;
  const addEos = scalar(get, "tokenizer.ggml.add_eos_token", file, "boolean") ?? false;

  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, vocab, merges,
    },
  };
  const tokenizerConfig: Record<string, unknown> = { add_bos_token: addBos, add_eos_token: addEos, clean_up_tokenization_spaces: false };
  if (bos !== undefined) tokenizerConfig.bos_token = tokens[bos];
  if (eos !== undefined) tokenizerConfig.eos_token = tokens[eos];
  return { tokenizerJson, tokenizerConfig };
}

/** The tokenizer of an open GGUF model, from its metadata. */
export function tokenizerFromGgufReader(reader: GgufReader): TextTokenizer {
  const { tokenizerJson, tokenizerConfig } = tokenizerFilesFromGguf((k) => reader.kv(k), reader.path);
  return tokenizerFromJson(tokenizerJson, tokenizerConfig, { description: `${reader.path} (tokenizer.ggml.* metadata)` });
}

/** The tokenizer of a GGUF file (any file of a split model), from its metadata; reads headers only. */
export async function loadGgufTokenizer(path: string): Promise<TextTokenizer> {
  const reader = await GgufReader.open(path);
  try {
    return tokenizerFromGgufReader(reader);
  } finally {
    await reader.close();
  }
}
