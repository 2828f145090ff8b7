/**
 * What `deepcast to-gguf` writes for a DeepSeek-V2/V3 checkpoint, decided from config.json, the
 * tokenizer files and the safetensors headers only (no tensor data): the GGUF tensors with their
 * sources in the HF checkpoint, and every metadata KV, in the order llama.cpp's own
 * convert_hf_to_gguf.py (v0.4.0) writes them; then, per output type, the per-tensor ggml types and
 * the tensor/KV order llama-quantize gives its output (src/quant/mix.ts).
 *
 * The tensor name map is formats/deepseek2-gguf.json. Data semantics for the pipeline (llama.cpp's
 * canonical path: convert --outtype bf16, then llama-quantize):
 *  - an FP8 weight with a `_scale_inv` companion has the values f32(fp8) * scale[r/128][c/128];
 *  - a tensor whose `inputType` is BF16 holds bf16_rne(f32 value); F32 tensors hold the f32 value
 *    (BF16 sources convert exactly); quantized types are computed from the BF16 values;
 *  - "stack": expert e of the output is the contiguous slab e (HF tensor `experts[e]`, row-major);
 *  - "kv_b": see `kvBSplit`.
 */
import { DeepcastError } from "../errors.js";
import { readFormat } from "../formats.js";
import type { Dtype } from "../io/dtypes.js";
import { ggmlType, kv, setKvInPlace, setKvLast, type GgmlTypeInfo, type GgufKV } from "../io/gguf.js";
import type { CheckpointSource } from "../io/source.js";
import { parseFtype, planQuantMix, type FtypeInfo, type MixOptions, type MixPlan, type MixTensorOut } from "../quant/mix.js";

// ---------------------------------------------------------------------------------------------
// inputs
// ---------------------------------------------------------------------------------------------

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

async function readJsonIfPresent(source: CheckpointSource, names: Set<string>, name: string): Promise<unknown> {
  if (!names.has(name)) return undefined;
  const text = (await source.readFile(name)).toString("utf8");
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new DeepcastError(`malformed JSON: ${(e as Error).message}`, { file: name });
  }
}

/** Loads config, tokenizer files and every shard header of a checkpoint. */
export async function loadHfModelFiles(source: CheckpointSource, dirName?: string): Promise<HfModelFiles> {
  const files = await source.listFiles();
  const names = new Set(files.map((f) => f.name));
  const config = await readJsonIfPresent(source, names, "config.json");
  if (!config || typeof config !== "object" || Array.isArray(config)) throw new DeepcastError("config.json is missing or not a JSON object", { file: "config.json" });
  const index = await readJsonIfPresent(source, names, "model.safetensors.index.json") as { weight_map?: Record<string, string> } | undefined;
  let shardNames: string[];
  if (index) {
    if (!index.weight_map || typeof index.weight_map !== "object") throw new DeepcastError("index has no weight_map", { file: "model.safetensors.index.json" });
    shardNames = [...new Set(Object.values(index.weight_map))];
  } else {
    shardNames = files.map((f) => f.name).filter((n) => n.startsWith("model") && n.endsWith(".safetensors"));
  }
  shardNames.sort(compareCodePoints);
  if (shardNames.length === 0) throw new DeepcastError("no model*.safetensors files in the checkpoint");
  const shards: HfShardHeader[] = [];
  for (const file of shardNames) {
    const h = await source.readHeader(file);
    shards.push({ file, tensors: h.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })) });
  }
  if (index?.weight_map) {
    const inParts = new Set(shards.flatMap((s) => s.tensors.map((t) => t.name)));
    const missing = Object.keys(index.weight_map).filter((n) => !inParts.has(n));
    if (missing.length) throw new DeepcastError(`index names ${missing.length} tensor(s) missing from the shards, e.g. ${missing[0]}`, { file: "model.safetensors.index.json" });
  }
  const chatTemplateJinja = names.has("chat_template.jinja") ? (await source.readFile("chat_template.jinja")).toString("utf8") : undefined;
  const dn = dirName ?? source.description.replace(/@[^/]*$/, "").replace(/[\\/]+$/, "").split(/[\\/]/).pop();
  return {
    ...(dn ? { dirName: dn } : {}),
    config: config as Record<string, unknown>,
    shards,
    tokenizer: await readJsonIfPresent(source, names, "tokenizer.json"),
    tokenizerConfig: await readJsonIfPresent(source, names, "tokenizer_config.json"),
    generationConfig: await readJsonIfPresent(source, names, "generation_config.json"),
    ...(chatTemplateJinja !== undefined ? { chatTemplateJinja } : {}),
    chatTemplateJson: await readJsonIfPresent(source, names, "chat_template.json"),
  };
}

// ---------------------------------------------------------------------------------------------
// formats/deepseek2-gguf.json
// ---------------------------------------------------------------------------------------------

interface MapEntry {
  hf: string;
  kind: "copy" | "stack" | "kv_b_split";
  gguf?: string;
  k_b?: string;
  v_b?: string;
  proj?: string;
  skipIfTiedEmbeddings?: boolean;
}

interface Deepseek2Format {
  architecture: string;
  hfArchitectures: string[];
  tensors: MapEntry[];
  stackOrder: string[];
  ignoreSuffixes: string[];
  dropSuffixes: string[];
  scaleSuffix: string;
  f32: { nameEndsWith: string[]; names: string[]; unlessEndsWith: string[] };
}


export function deepseek2Format(): Deepseek2Format {
  return readFormat<Deepseek2Format>("deepseek2-gguf.json");
}

interface CompiledEntry extends MapEntry {
  re: RegExp;
}

function compilePattern(p: string): RegExp {
  const esc = p.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{bid\}/g, "(?<bid>\\d+)").replace(/\{xid\}/g, "(?<xid>\\d+)");
  return new RegExp(`^${esc}$`);
}

function fill(template: string, bid: string | undefined): string {
  return bid === undefined ? template : template.replace(/\{bid\}/g, bid);
}

// ---------------------------------------------------------------------------------------------
// helpers reproducing Python behaviour
// ---------------------------------------------------------------------------------------------

/** Python's str ordering (code points; UTF-16 order except where surrogate pairs meet U+E000..U+FFFF). */
function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) {
      const xs = x >= 0xd800 && x <= 0xdfff;
      const ys = y >= 0xd800 && y <= 0xdfff;
      if (xs !== ys) return xs ? 1 : -1;
      return x - y;
    }
  }
  return a.length - b.length;
}

const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

/** Python truthiness for JSON values. */
function truthy(v: unknown): boolean {
  if (v === null || v === undefined || v === false || v === 0 || v === "") return false;
  if (Array.isArray(v)) return v.length > 0;
  if (isObj(v)) return Object.keys(v).length > 0;
  return true;
}

/** Python == for JSON values as they occur here (strings, null, AddedToken dicts). */
function pyEq(a: unknown, b: unknown): boolean {
  if ((a === null || a === undefined) && (b === null || b === undefined)) return true;
  if (isObj(a) || isObj(b)) return JSON.stringify(a) === JSON.stringify(b);
  return a === b;
}

function isPyInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v);
}

function findHparam(h: Record<string, unknown>, keys: readonly string[]): unknown {
  for (const k of keys) if (k in h) return h[k];
  return undefined;
}

function num(h: Record<string, unknown>, key: string, what = key): number {
  const v = h[key];
  if (typeof v !== "number") throw new DeepcastError(`config.json: ${what} is missing or not a number`, { file: "config.json" });
  return v;
}

/** str.title() */
function pyTitle(s: string): string {
  let out = "";
  let prevCased = false;
  for (const ch of s) {
    const cased = ch.toLowerCase() !== ch.toUpperCase();
    out += cased ? (prevCased ? ch.toLowerCase() : ch.toUpperCase()) : ch;
    prevCased = cased;
  }
  return out;
}

/** str.islower() */
function pyIsLower(s: string): boolean {
  let cased = false;
  for (const ch of s) {
    if (ch.toLowerCase() !== ch.toUpperCase()) {
      cased = true;
      if (ch !== ch.toLowerCase()) return false;
    }
  }
  return cased;
}

/** gguf-py Metadata.id_to_title. */
export function idToTitle(s: string): string {
  return s.trim().replace(/-/g, " ").split(/\s+/).filter(Boolean)
    .map((w) => (pyIsLower(w) && !/^(v\d+(?:\.\d+)*|\d.*)$/.test(w) ? pyTitle(w) : w)).join(" ");
}

export interface ModelIdComponents {
  name?: string;
  organization?: string;
  basename?: string;
  finetune?: string;
  version?: string;
  sizeLabel?: string;
}

/** gguf-py Metadata.get_model_id_components (the heuristics behind general.name/basename/version/...). */
export function modelIdComponents(modelId: string | undefined, totalParams = 0): ModelIdComponents {
  if (modelId === undefined) return {};
  if (modelId.includes(" ")) return { name: modelId };
  let org: string | undefined;
  let full: string;
  const slash = modelId.indexOf("/");
  if (slash >= 0) {
    org = modelId.slice(0, slash);
    full = modelId.slice(slash + 1);
  } else {
    full = modelId;
  }
  if (org !== undefined && org.length > 0 && org[0] === ".") org = undefined;
  const parts = full.split("-").filter((p) => p.length > 0);
  const types: Set<string>[] = parts.map(() => new Set());
  const isDec = (c: string | undefined) => c !== undefined && /^\d$/.test(c);
  parts.forEach((part0, i) => {
    let part = part0;
    if (/^(v|iter)?\d+([.]\d+)*$/i.test(part)) {
      types[i]!.add("version");
    } else if (/^(i?q\d(_\w)*|b?fp?(16|32))$/i.test(part)) {
      types[i]!.add("type");
      parts[i] = part.toUpperCase();
    } else if (i > 0 && /^(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)$/i.test(part)) {
      part = part.replace(/_/g, ".");
      if (isDec(part[part.length - 1])) part = part.slice(0, -2) + "." + part[part.length - 1] + part[part.length - 2];
      if (part.length > 1 && isDec(part[part.length - 2]) && "kmbt".includes(part[part.length - 1]!)) {
        part = part.slice(0, -1) + part[part.length - 1]!.toUpperCase();
      }
      if (totalParams !== 0) {
        const numStr = part.slice(0, -1);
        const mult = " KMBT".indexOf(part[part.length - 1]!);
        if (/^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/.test(numStr)) {
          const labelParams = Number(numStr) * Math.pow(1000, mult);
          if ((totalParams < 0 && labelParams < Math.floor(Math.abs(totalParams) / 8)) ||
              (totalParams > 0 && Math.abs(labelParams - totalParams) > Math.floor((7 * totalParams) / 8))) {
            types[i]!.add("finetune");
            part = part.slice(0, -1) + part[part.length - 1]!.toLowerCase();
          }
        }
      }
      if (types[i]!.size === 0) types[i]!.add("size_label");
      parts[i] = part;
    } else if (i > 0 && /^(chat|instruct|vision|lora)$/i.test(part)) {
      types[i]!.add(totalParams < 0 && part.toLowerCase() === "lora" ? "type" : "finetune");
    }
  });
  if (parts.some((p, i) => types[i]!.has("size_label") && /\d/.test(p))) {
    parts.forEach((p, i) => {
      if (types[i]!.has("size_label") && /^\p{L}+$/u.test(p)) types[i]!.delete("size_label");
    });
  }
  let atStart = true;
  parts.forEach((p, i) => {
    const t = types[i]!;
    if (atStart && ((t.size === 0 && /^\p{L}/u.test(p)) || t.has("version"))) {
      t.add("basename");
    } else {
      if (atStart) atStart = false;
      if (t.size === 0) t.add("finetune");
    }
  });
  for (let i = parts.length - 1; i >= 0; i--) {
    const t = types[i]!;
    if (t.has("basename") && t.size > 1) t.delete("basename");
    else break;
  }
  const join = (pred: (t: Set<string>) => boolean, dedupe = false) => {
    let xs = parts.filter((_, i) => pred(types[i]!));
    if (dedupe) xs = [...new Set(xs)];
    return xs.length ? xs.join("-") : undefined;
  };
  let basename = join((t) => t.has("basename"));
  const sizeLabel = join((t) => t.has("size_label"), true);
  const finetune = join((t) => t.has("finetune"));
  const version = join((t) => t.has("version") && !t.has("basename"));
  if (sizeLabel === undefined && finetune === undefined && version === undefined) basename = undefined;
  const out: ModelIdComponents = { name: full };
  if (org !== undefined) out.organization = org;
  if (basename !== undefined) out.basename = basename;
  if (finetune !== undefined) out.finetune = finetune;
  if (version !== undefined) out.version = version;
  if (sizeLabel !== undefined) out.sizeLabel = sizeLabel;
  return out;
}

function pyRound(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** gguf-py utility.model_weight_count_rounded_notation. */
export function roundedParamCount(n: number, minDigits = 2): string {
  let scaled: number;
  let suffix: string;
  if (n > 1e12) { scaled = n * 1e-12; suffix = "T"; }
  else if (n > 1e9) { scaled = n * 1e-9; suffix = "B"; }
  else if (n > 1e6) { scaled = n * 1e-6; suffix = "M"; }
  else { scaled = n * 1e-3; suffix = "K"; }
  const fix = Math.max(minDigits - String(pyRound(scaled)).replace(/^0+/, "").length, 0);
  return `${scaled.toFixed(fix)}${suffix}`;
}

/** gguf-py utility.size_label. */
export function sizeLabel(total: number, shared: number, expert: number, expertCount: number): string {
  return expertCount > 0 ? `${expertCount}x${roundedParamCount(Math.abs(shared) + Math.abs(expert))}` : roundedParamCount(Math.abs(total));
}

// ---------------------------------------------------------------------------------------------
// the model plan
// ---------------------------------------------------------------------------------------------

export interface HfSourceRef {
  file: string;
  name: string;
  dtype: Dtype;
  /** PyTorch order. */
  shape: number[];
  /** Block scale of an FP8 weight (multiply, 128x128 blocks). */
  scaleInv?: { file: string; name: string; dtype: Dtype; shape: number[] };
}

export type GgufTensorSource =
  | { kind: "tensor"; src: HfSourceRef }
  /** Experts 0..E-1 stacked along a new outer dim: output slab e = experts[e]. */
  | { kind: "stack"; experts: HfSourceRef[] }
  /** One half of kv_b_proj, see kvBSplit. */
  | { kind: "kv_b"; part: "k_b" | "v_b"; src: HfSourceRef; nHead: number; qkNope: number; vHead: number; kvLora: number };

export interface GgufModelTensor {
  name: string;
  /** ggml order (reversed PyTorch shape), as convert writes it. */
  ne: number[];
  /** PyTorch order of the output tensor. */
  shape: number[];
  source: GgufTensorSource;
  /** convert stores it as F32 whatever --outtype (1-D, norms, router, non-".weight"). */
  forceF32: boolean;
  /** Dequantized from FP8 (its sources have `_scale_inv` companions). */
  fp8: boolean;
}

export interface Deepseek2Hparams {
  blockCount: number;
  nHead: number;
  /** As stored in the GGUF (1: MLA written as MQA). */
  nHeadKv: number;
  /** config num_key_value_heads, used to split kv_b_proj. */
  nKvHeadHf: number;
  nExpert: number;
  qkNope: number;
  qkRope: number;
  vHead: number;
  kvLora: number;
}

export interface Deepseek2GgufModel {
  architecture: "deepseek2";
  hparams: Deepseek2Hparams;
  /** KVs in convert_hf_to_gguf order; general.file_type = 32 (BF16) until an output type is chosen. */
  kvs: GgufKV[];
  /** In convert_hf_to_gguf order. */
  tensors: GgufModelTensor[];
  params: { total: number; shared: number; expert: number; expertCount: number };
  /** HF tensors that were skipped (MTP layers, tied lm_head, ignored suffixes). */
  skipped: string[];
}

export interface Deepseek2PlanOptions {
  /** general.name (convert --model-name); default: derived from dirName like gguf-py. */
  name?: string;
  /** tokenizer.ggml.pre; default "deepseek-v3" (llama.cpp identifies DeepSeek-V3's tokenizer by a hash of its output). */
  tokenizerPre?: string;
  /**
   * Whether the HF config is read the way a transformers version that knows the model type does (it adds
   * head_dim = qk_rope_head_dim), which makes convert write attention.key_length/value_length before
   * general.file_type. Default true (transformers >= 4.48, as in the golden conversion).
   */
  transformersKnowsModel?: boolean;
  /** Extra general.* KVs appended after the name block (e.g. general.license), in order. */
  extraGeneral?: GgufKV[];
}

const FILE_TYPE_BF16 = 32;

/**
 * Builds the GGUF tensor list (with sources) and metadata that llama.cpp's convert_hf_to_gguf.py
 * produces for a DeepSeek-V2/V3 checkpoint.
 */
export function planDeepseek2Gguf(files: HfModelFiles, opts: Deepseek2PlanOptions = {}): Deepseek2GgufModel {
  const fmt = deepseek2Format();
  const h = files.config;
  const arch = Array.isArray(h.architectures) ? h.architectures[0] : undefined;
  if (typeof arch !== "string" || !fmt.hfArchitectures.includes(arch)) {
    throw new DeepcastError(`unsupported architecture ${JSON.stringify(arch)}: expected one of ${fmt.hfArchitectures.join(", ")}`, { file: "config.json" });
  }
  const blockCount = num(h, "num_hidden_layers");
  const nKvHeadHf = num(h, "num_key_value_heads");
  const qkNope = num(h, "qk_nope_head_dim");
  const qkRope = num(h, "qk_rope_head_dim");
  const vHead = num(h, "v_head_dim");
  const kvLora = typeof h.kv_lora_rank === "number" ? h.kv_lora_rank : 512;
  const nExpertRaw = h.n_routed_experts;
  const nExpert = typeof nExpertRaw === "number" ? nExpertRaw : 0;
  const tied = h.tie_word_embeddings === true;

  // --- index_tensors + dequant_model: model_tensors in insertion order
  const all = new Map<string, { file: string; t: HfTensorHeader }>();
  for (const shard of [...files.shards].sort((a, b) => compareCodePoints(a.file, b.file))) {
    for (const t of [...shard.tensors].sort((a, b) => compareCodePoints(a.name, b.name))) {
      if (!all.has(t.name)) all.set(t.name, { file: shard.file, t });
    }
  }
  const quant = isObj(h.quantization_config) ? h.quantization_config : undefined;
  const quantMethod = quant?.quant_method;
  if (quantMethod !== undefined && quantMethod !== "fp8") {
    throw new DeepcastError(`quantization method ${JSON.stringify(quantMethod)} is not supported (only fp8)`, { file: "config.json" });
  }
  const scales = new Map<string, { file: string; t: HfTensorHeader }>();
  const order: string[] = [];
  for (const [name, v] of all) {
    if (quantMethod === "fp8" && name.endsWith(fmt.scaleSuffix)) {
      const w = name.slice(0, -fmt.scaleSuffix.length);
      if (!all.has(w)) throw new DeepcastError(`scale ${name} has no weight ${w}`, { tensor: name, file: v.file });
      scales.set(w, v);
      continue;
    }
    if (quantMethod === "fp8" && fmt.dropSuffixes.some((s) => name.endsWith(s))) continue;
    order.push(name);
  }
  const blockSize = Array.isArray(quant?.weight_block_size) ? (quant!.weight_block_size as number[]) : [128, 128];
  const ref = (name: string): HfSourceRef => {
    const v = all.get(name)!;
    const r: HfSourceRef = { file: v.file, name, dtype: v.t.dtype, shape: [...v.t.shape] };
    const s = scales.get(name);
    if (s) {
      const want = r.shape.map((d, i) => Math.ceil(d / (blockSize[i] ?? 1)));
      if (r.shape.length !== 2 || s.t.shape.length !== 2 || s.t.shape[0] !== want[0] || s.t.shape[1] !== want[1]) {
        throw new DeepcastError(`scale ${s.t.name} has shape ${JSON.stringify(s.t.shape)}, expected ${JSON.stringify(want)} for weight ${JSON.stringify(r.shape)}`, { tensor: name, file: v.file });
      }
      r.scaleInv = { file: s.file, name: s.t.name, dtype: s.t.dtype, shape: [...s.t.shape] };
    }
    return r;
  };

  // --- prepare_tensors / modify_tensors
  const entries: CompiledEntry[] = fmt.tensors.map((e) => ({ ...e, re: compilePattern(e.hf) }));
  const f32Names = fmt.f32.names.map(compilePattern);
  const tensors: GgufModelTensor[] = [];
  const skipped: string[] = [];
  const experts = new Map<string, Map<string, HfSourceRef>>(); // bid -> HF name -> ref
  const seen = new Set<string>();

  const emit = (name: string, shape: number[], source: GgufTensorSource, fp8: boolean) => {
    if (seen.has(name)) throw new DeepcastError("two HF tensors map to the same GGUF tensor", { tensor: name });
    seen.add(name);
    const forceF32 = shape.length <= 1 ||
      fmt.f32.nameEndsWith.some((s) => name.endsWith(s)) ||
      f32Names.some((re) => re.test(name)) ||
      !fmt.f32.unlessEndsWith.some((s) => name.endsWith(s));
    tensors.push({ name, ne: [...shape].reverse(), shape, source, forceF32, fp8 });
  };

  for (const name of order) {
    if (fmt.ignoreSuffixes.some((s) => name.endsWith(s))) {
      skipped.push(name);
      continue;
    }
    const bidPart = name.split(".").find((p) => /^\d+$/.test(p));
    if (tied && (name === "lm_head.weight" || name === "model.lm_head.weight")) {
      skipped.push(name);
      continue;
    }
    const layer = /^model.layers.(\d+)/.exec(name);
    if (layer && Number(layer[1]) >= blockCount) {
      skipped.push(name);
      continue;
    }
    const entry = entries.find((e) => e.re.test(name));
    const m = entry?.re.exec(name);
    const bid = m?.groups?.bid;
    if (nExpert > 0 && name.includes("mlp.experts")) {
      if (bidPart === undefined) throw new DeepcastError("expert tensor without a layer number", { tensor: name });
      const buf = experts.get(bidPart) ?? new Map<string, HfSourceRef>();
      experts.set(bidPart, buf);
      buf.set(name, ref(name));
      if (buf.size >= nExpert * 3) {
        for (const proj of fmt.stackOrder) {
          const list: HfSourceRef[] = [];
          for (let x = 0; x < nExpert; x++) {
            const en = `model.layers.${bidPart}.mlp.experts.${x}.${proj}.weight`;
            const r = buf.get(en);
            if (!r) throw new DeepcastError(`expert tensor ${en} is missing`, { tensor: en });
            buf.delete(en);
            list.push(r);
          }
          const stackEntry = entries.find((e) => e.kind === "stack" && e.proj === proj);
          if (!stackEntry?.gguf) throw new DeepcastError(`no GGUF name for stacked ${proj}`, { tensor: name });
          const first = list[0]!;
          if (!list.every((r) => r.shape.length === first.shape.length && r.shape.every((d, i) => d === first.shape[i]))) {
            throw new DeepcastError("experts of one layer have different shapes", { tensor: `model.layers.${bidPart}.mlp.experts.*.${proj}.weight` });
          }
          emit(fill(stackEntry.gguf, bidPart), [nExpert, ...first.shape], { kind: "stack", experts: list }, list.some((r) => r.scaleInv !== undefined));
        }
      }
      continue;
    }
    if (!entry || !m) throw new DeepcastError("cannot map this tensor to a GGUF name", { tensor: name, file: all.get(name)!.file });
    const r = ref(name);
    if (entry.kind === "kv_b_split") {
      const rows = nKvHeadHf * (qkNope + vHead);
      if (r.shape.length !== 2 || r.shape[0] !== rows) {
        throw new DeepcastError(`kv_b_proj has shape ${JSON.stringify(r.shape)}, expected [${rows} (num_key_value_heads * (qk_nope_head_dim + v_head_dim)), kv_lora_rank]`, { tensor: name, file: r.file });
      }
      const cols = r.shape[1]!;
      const base = { src: r, nHead: nKvHeadHf, qkNope, vHead, kvLora: cols };
      emit(fill(entry.k_b!, bid), [nKvHeadHf, cols, qkNope], { kind: "kv_b", part: "k_b", ...base }, r.scaleInv !== undefined);
      emit(fill(entry.v_b!, bid), [nKvHeadHf, vHead, cols], { kind: "kv_b", part: "v_b", ...base }, r.scaleInv !== undefined);
      continue;
    }
    if (entry.kind !== "copy" || !entry.gguf) throw new DeepcastError("cannot map this tensor to a GGUF name", { tensor: name });
    emit(fill(entry.gguf, bid), r.shape, { kind: "tensor", src: r }, r.scaleInv !== undefined);
  }
  const leftover = [...experts.values()].flatMap((b) => [...b.keys()]);
  if (leftover.length) throw new DeepcastError(`unprocessed expert tensors (incomplete layer): ${leftover.slice(0, 3).join(", ")}`, { tensor: leftover[0] });

  // --- gguf_writer.get_total_parameter_count
  let total = 0;
  let shared = 0;
  let expert = 0;
  let expertSum = 0;
  let nExpertTensors = 0;
  for (const t of tensors) {
    const size = t.shape.reduce((a, b) => a * b, 1);
    if (t.name.includes("_exps.") && t.shape.length >= 3) {
      const count = t.shape[t.shape.length - (t.name.includes(".bias") ? 2 : 3)]!;
      expert += Math.floor(size / count);
      expertSum += count;
      nExpertTensors++;
    } else {
      shared += size;
    }
    total += size;
  }
  const params = { total, shared, expert, expertCount: nExpertTensors > 0 ? Math.floor(expertSum / nExpertTensors) : 0 };

  const kvs = buildKvs(files, opts, params, { blockCount, kvLora, qkNope, qkRope, vHead, nExpert });
  return {
    architecture: "deepseek2",
    hparams: {
      blockCount,
      nHead: num(h, "num_attention_heads"),
      nHeadKv: 1,
      nKvHeadHf,
      nExpert,
      qkNope,
      qkRope,
      vHead,
      kvLora,
    },
    kvs,
    tensors,
    params,
    skipped,
  };
}

// ---------------------------------------------------------------------------------------------
// metadata
// ---------------------------------------------------------------------------------------------

function buildKvs(
  files: HfModelFiles,
  opts: Deepseek2PlanOptions,
  params: Deepseek2GgufModel["params"],
  d: { blockCount: number; kvLora: number; qkNope: number; qkRope: number; vHead: number; nExpert: number },
): GgufKV[] {
  const fmt = deepseek2Format();
  const A = fmt.architecture;
  const h = { ...files.config };
  const kvs: GgufKV[] = [];
  const add = (e: GgufKV) => setKvInPlace(kvs, e);
  const addStr = (key: string, v: unknown) => {
    if (typeof v === "string" && v.length > 0) add(kv.str(key, v));
  };

  add(kv.str("general.architecture", A));
  add(kv.str("general.type", "model"));

  // Metadata.load: heuristics from config _name_or_path and the folder name, then generation_config
  const meta: ModelIdComponents = {};
  const merge = (c: ModelIdComponents, title: boolean) => {
    if (meta.name === undefined && c.name !== undefined) meta.name = title ? idToTitle(c.name) : c.name;
    if (meta.organization === undefined && c.organization !== undefined) meta.organization = idToTitle(c.organization);
    for (const k of ["basename", "finetune", "version", "sizeLabel"] as const) if (meta[k] === undefined && c[k] !== undefined) meta[k] = c[k];
  };
  const nameOrPath = h._name_or_path;
  if (typeof nameOrPath === "string" && (nameOrPath.match(/\//g) ?? []).length <= 1) merge(modelIdComponents(nameOrPath, params.total), true);
  if (files.dirName !== undefined) merge(modelIdComponents(files.dirName, params.total), true);
  const g = isObj(files.generationConfig) ? files.generationConfig : {};
  const sampling: [string, string, "INT32" | "FLOAT32" | "STRING"][] = [
    ["sequence", "general.sampling.sequence", "STRING"],
    ["top_k", "general.sampling.top_k", "INT32"],
    ["top_p", "general.sampling.top_p", "FLOAT32"],
    ["min_p", "general.sampling.min_p", "FLOAT32"],
    ["xtc_probability", "general.sampling.xtc_probability", "FLOAT32"],
    ["xtc_threshold", "general.sampling.xtc_threshold", "FLOAT32"],
    ["temperature", "general.sampling.temp", "FLOAT32"],
    ["penalty_last_n", "general.sampling.penalty_last_n", "INT32"],
    ["penalty_repeat", "general.sampling.penalty_repeat", "FLOAT32"],
    ["mirostat", "general.sampling.mirostat", "INT32"],
    ["mirostat_tau", "general.sampling.mirostat_tau", "FLOAT32"],
    ["mirostat_eta", "general.sampling.mirostat_eta", "FLOAT32"],
  ];
  for (const [src, key, type] of sampling) {
    let v = g[src];
    if (src === "penalty_repeat" && !(src in g)) v = g.repetition_penalty;
    if (v === null || v === undefined) continue;
    if (type === "STRING") addStr(key, v);
    else if (typeof v === "number") add({ key, type, value: v });
  }
  const name = opts.name ?? meta.name ?? files.dirName;
  if (name === undefined) throw new DeepcastError("no model name: pass a name or the checkpoint folder name");
  addStr("general.name", name);
  addStr("general.version", meta.version);
  addStr("general.organization", meta.organization);
  addStr("general.finetune", meta.finetune);
  addStr("general.basename", meta.basename);
  const label = meta.sizeLabel ?? (params.total > 0 ? sizeLabel(params.total, params.shared, params.expert, params.expertCount) : undefined);
  addStr("general.size_label", label);
  for (const e of opts.extraGeneral ?? []) add(e);

  // DeepseekV2Model.set_gguf_parameters -> TextModel.set_gguf_parameters
  h.num_key_value_heads = 1;
  if (!("rms_norm_eps" in h)) h.rms_norm_eps = 1e-6;
  if ((opts.transformersKnowsModel ?? true) && !("head_dim" in h)) h.head_dim = d.qkRope;
  const rope: Record<string, unknown> = { ...(isObj(h.rope_parameters) ? h.rope_parameters : isObj(h.rope_scaling) ? h.rope_scaling : {}) };
  const ropeTheta = findHparam(h, ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"]);
  const origMax = findHparam(h, ["original_max_position_embeddings"]);
  if (!("full_attention" in rope) && !("sliding_attention" in rope)) {
    if (!("rope_theta" in rope) && ropeTheta !== undefined && ropeTheta !== null) rope.rope_theta = ropeTheta;
    if (!("rope_type" in rope) && rope.type !== undefined && rope.type !== null) rope.rope_type = rope.type;
    if (!("original_max_position_embeddings" in rope) && origMax !== undefined && origMax !== null) rope.original_max_position_embeddings = origMax;
  }
  const u32 = (key: string, v: unknown) => {
    if (typeof v !== "number") throw new DeepcastError(`config.json: value for ${key} is not a number`, { file: "config.json" });
    add(kv.u32(key, v));
  };
  const f32 = (key: string, v: unknown) => {
    if (typeof v !== "number") throw new DeepcastError(`config.json: value for ${key} is not a number`, { file: "config.json" });
    add(kv.f32(key, v));
  };
  const opt = (keys: string[]) => {
    const v = findHparam(h, keys);
    return v === null ? undefined : v;
  };

  u32(`${A}.block_count`, d.blockCount);
  const nCtx = opt(["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"]);
  if (nCtx !== undefined) u32(`${A}.context_length`, nCtx);
  const nEmbd = opt(["hidden_size", "n_embd", "dim"]);
  if (nEmbd !== undefined) u32(`${A}.embedding_length`, nEmbd);
  const nFf = opt(["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"]);
  if (nFf !== undefined) u32(`${A}.feed_forward_length`, nFf);
  const nHead = opt(["num_attention_heads", "n_head", "n_heads"]);
  if (nHead !== undefined) u32(`${A}.attention.head_count`, nHead);
  u32(`${A}.attention.head_count_kv`, h.num_key_value_heads);
  if (h.is_causal === false) add(kv.bool(`${A}.attention.causal`, false));
  const rp = isObj(rope.full_attention) ? rope.full_attention : rope;
  const ropeType = rp.rope_type;
  if (typeof ropeType === "string") {
    const factor = rp.factor;
    if (ropeType === "linear" && typeof factor === "number") {
      add(kv.str(`${A}.rope.scaling.type`, "linear"));
      f32(`${A}.rope.scaling.factor`, factor);
    } else if (ropeType === "yarn" && typeof factor === "number") {
      add(kv.str(`${A}.rope.scaling.type`, "yarn"));
      f32(`${A}.rope.scaling.factor`, factor);
      u32(`${A}.rope.scaling.original_context_length`, rp.original_max_position_embeddings);
      const opf = (key: string, v: unknown) => { if (v !== undefined && v !== null) f32(key, v); };
      opf(`${A}.rope.scaling.yarn_ext_factor`, rp.extrapolation_factor);
      opf(`${A}.rope.scaling.yarn_attn_factor`, rp.attention_factor ?? rp.attn_factor);
      opf(`${A}.rope.scaling.yarn_beta_fast`, rp.beta_fast);
      opf(`${A}.rope.scaling.yarn_beta_slow`, rp.beta_slow);
    } else if (ropeType === "su" || ropeType === "longrope") {
      add(kv.str(`${A}.rope.scaling.type`, "longrope"));
    }
  }
  if (rp.rope_theta !== undefined && rp.rope_theta !== null) f32(`${A}.rope.freq_base`, rp.rope_theta);
  const rmsEps = opt(["rms_norm_eps", "norm_eps"]);
  if (rmsEps !== undefined) f32(`${A}.attention.layer_norm_rms_epsilon`, rmsEps);
  const lnEps = opt(["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"]);
  if (lnEps !== undefined) f32(`${A}.attention.layer_norm_epsilon`, lnEps);
  const nExp = opt(["num_local_experts", "num_experts", "n_routed_experts"]);
  if (nExp !== undefined) u32(`${A}.expert_count`, nExp);
  const nUsed = opt(["num_experts_per_tok", "num_experts_per_token", "top_k_experts"]);
  if (nUsed !== undefined) u32(`${A}.expert_used_count`, nUsed);
  if (h.n_group !== undefined && h.n_group !== null) u32(`${A}.expert_group_count`, h.n_group);
  if (h.topk_group !== undefined && h.topk_group !== null) u32(`${A}.expert_group_used_count`, h.topk_group);
  const score = opt(["score_function", "scoring_func", "score_func", "moe_router_activation", "moe_router_activation_func", "expert_selection_fn"]);
  if (score !== undefined) {
    const gating = ({ softmax: 1, sigmoid: 2, sqrtsoftplus: 4 } as Record<string, number>)[String(score)];
    if (gating === undefined) throw new DeepcastError(`unsupported expert score gating function ${JSON.stringify(score)}`, { file: "config.json" });
    add(kv.u32(`${A}.expert_gating_func`, gating));
  }
  if (h.head_dim !== undefined && h.head_dim !== null) {
    u32(`${A}.attention.key_length`, h.head_dim);
    u32(`${A}.attention.value_length`, h.head_dim);
  }
  add(kv.u32("general.file_type", FILE_TYPE_BF16));

  // DeepseekV2Model part
  const hasMoe = h.n_routed_experts !== undefined && h.n_routed_experts !== null;
  const firstDense = h.first_k_dense_replace ?? (hasMoe ? 0 : d.blockCount);
  u32(`${A}.leading_dense_block_count`, firstDense);
  u32(`${A}.vocab_size`, h.vocab_size);
  if (h.q_lora_rank !== undefined && h.q_lora_rank !== null) u32(`${A}.attention.q_lora_rank`, h.q_lora_rank);
  u32(`${A}.attention.kv_lora_rank`, d.kvLora);
  u32(`${A}.attention.key_length`, d.kvLora + d.qkRope);
  u32(`${A}.attention.value_length`, d.kvLora);
  u32(`${A}.attention.key_length_mla`, d.qkNope + d.qkRope);
  u32(`${A}.attention.value_length_mla`, d.vHead);
  const moeFf = findHparam(h, ["moe_intermediate_size", "intermediate_size"]);
  if (moeFf === undefined) throw new DeepcastError("config.json: moe_intermediate_size is missing", { file: "config.json" });
  u32(`${A}.expert_feed_forward_length`, moeFf);
  if (hasMoe) u32(`${A}.expert_count`, h.n_routed_experts);
  u32(`${A}.expert_shared_count`, h.n_shared_experts ?? 0);
  if (h.routed_scaling_factor !== undefined && h.routed_scaling_factor !== null) f32(`${A}.expert_weights_scale`, h.routed_scaling_factor);
  if (truthy(h.norm_topk_prob)) add(kv.bool(`${A}.expert_weights_norm`, true));
  u32(`${A}.rope.dimension_count`, d.qkRope);
  const mscaleAll = rope.mscale_all_dim;
  if (typeof mscaleAll === "number") add(kv.f32(`${A}.rope.scaling.yarn_log_multiplier`, 0.1 * mscaleAll));

  add(kv.u32("general.quantization_version", 2));

  for (const e of tokenizerKvs(files, opts.tokenizerPre ?? "deepseek-v3", typeof h.vocab_size === "number" ? h.vocab_size : undefined)) add(e);
  return kvs;
}

/** TextModel._set_vocab_gpt2 + SpecialVocab(load_merges=True).add_to_gguf, from tokenizer.json / tokenizer_config.json / config.json. */
function tokenizerKvs(files: HfModelFiles, pre: string, vocabSizeCfg: number | undefined): GgufKV[] {
  const tok = files.tokenizer;
  if (!isObj(tok) || !isObj(tok.model)) throw new DeepcastError("tokenizer.json is missing or has no model", { file: "tokenizer.json" });
  const model = tok.model;
  if (model.type !== undefined && model.type !== "BPE") throw new DeepcastError(`tokenizer model ${JSON.stringify(model.type)} is not BPE`, { file: "tokenizer.json" });
  const vocab = isObj(model.vocab) ? (model.vocab as Record<string, number>) : {};
  const added = Array.isArray(tok.added_tokens) ? (tok.added_tokens as Record<string, unknown>[]) : [];
  // transformers get_vocab(): model vocab + added tokens
  const full = new Map<string, number>(Object.entries(vocab));
  const addedByContent = new Map<string, Record<string, unknown>>();
  const addedById = new Map<number, Record<string, unknown>>();
  for (const a of added) {
    if (typeof a.content !== "string" || !isPyInt(a.id)) continue;
    full.set(a.content, a.id);
    addedByContent.set(a.content, a);
    addedById.set(a.id, a);
  }
  let maxId = -1;
  for (const id of full.values()) maxId = Math.max(maxId, id);
  const vocabSize = vocabSizeCfg ?? full.size;
  if (maxId >= vocabSize) throw new DeepcastError(`tokenizer has token id ${maxId}, config vocab_size is ${vocabSize}`, { file: "tokenizer.json" });
  const reverse = new Map<number, string>();
  for (const [t, id] of full) reverse.set(id, t);
  const looksSpecial = (t: string) =>
    ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].includes(t) ||
    (t.startsWith("<|") && t.endsWith("|>")) || (t.startsWith("<｜") && t.endsWith("｜>")) ||
    (t.startsWith("<unused") && t.endsWith(">"));
  const tokens: string[] = [];
  const types: number[] = [];
  for (let i = 0; i < vocabSize; i++) {
    let t = reverse.get(i);
    if (t === undefined) {
      tokens.push(`[PAD${i}]`);
      types.push(5);
      continue;
    }
    if (addedByContent.has(t)) {
      const dec = addedById.get(i) ?? addedByContent.get(t)!;
      if (dec.special === true || looksSpecial(t)) {
        types.push(3);
      } else {
        t = t.replace(/\u2581/g, " ");
        types.push(4);
      }
    } else {
      types.push(1);
    }
    tokens.push(t);
  }
  const out: GgufKV[] = [
    kv.str("tokenizer.ggml.model", "gpt2"),
    kv.str("tokenizer.ggml.pre", pre),
    kv.arr("tokenizer.ggml.tokens", "STRING", tokens),
    kv.arr("tokenizer.ggml.token_type", "INT32", types),
  ];

  // SpecialVocab._try_load_from_tokenizer_json
  let merges: string[] = [];
  const rawMerges = model.merges;
  if (Array.isArray(rawMerges) && rawMerges.length > 0) {
    if (typeof rawMerges[0] === "string") {
      merges = rawMerges as string[];
    } else if (Array.isArray(rawMerges[0]) && rawMerges[0].length === 2 && typeof rawMerges[0][0] === "string") {
      merges = (rawMerges as string[][]).map((pair) => pair.map((p) => p.replace(/ /g, "\u0120")).join(" "));
    } else {
      throw new DeepcastError("unknown tokenizer merges format", { file: "tokenizer.json" });
    }
  }
  const addSpecial = new Map<string, boolean>();
  const specialIds = new Map<string, number>();
  let specialTypes = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
  let normalizerLowercase: boolean | undefined;
  let normalizerStripAccents: boolean | undefined;
  const parseNormalizer = (n: Record<string, unknown>) => {
    if (n.type === "Lowercase") normalizerLowercase = true;
    else if (n.type === "StripAccents") normalizerStripAccents = true;
    else if (n.type === "BertNormalizer") {
      if ("lowercase" in n) normalizerLowercase = n.lowercase as boolean;
      if ("strip_accents" in n) normalizerStripAccents = n.strip_accents as boolean;
    } else if (n.type === "Sequence" && Array.isArray(n.normalizers)) {
      for (const x of n.normalizers) if (isObj(x)) parseNormalizer(x);
    }
  };
  if (isObj(tok.normalizer)) parseNormalizer(tok.normalizer);
  const tc: Record<string, unknown> | undefined = isObj(files.tokenizerConfig) && truthy(files.tokenizerConfig) ? { ...files.tokenizerConfig } : undefined;
  let specialBos = tc?.bos_token;
  let specialCls = tc?.cls_token;
  let specialEos = tc?.eos_token;
  let specialSep = tc?.sep_token;
  if (!truthy(specialBos) && truthy(specialCls) && tc) tc.bos_token = specialBos = specialCls;
  if (!truthy(specialEos) && truthy(specialSep) && tc) tc.eos_token = specialEos = specialSep;
  const post = tok.post_processor;
  if (isObj(post)) {
    const processors = (Array.isArray(post.processors) ? post.processors : [post]).filter(isObj);
    for (const proc of processors) {
      if (proc.type === "RobertaProcessing") {
        addSpecial.set("bos", true);
        addSpecial.set("eos", true);
        addSpecial.set("sep", true);
        if (!truthy(specialCls) && tc) {
          specialCls = Array.isArray(proc.cls) ? proc.cls[0] : specialBos;
          tc.cls_token = specialCls;
        }
        if (!truthy(specialSep) && tc) {
          specialSep = Array.isArray(proc.sep) ? proc.sep[0] : specialEos;
          tc.sep_token = specialSep;
        }
        continue;
      }
      if (proc.type !== "TemplateProcessing") continue;
      const single = Array.isArray(proc.single) ? (proc.single as Record<string, unknown>[]) : [];
      let pair = Array.isArray(proc.pair) ? (proc.pair as Record<string, unknown>[]) : [];
      const specialId = (x: Record<string, unknown> | undefined): unknown => (isObj(x?.SpecialToken) ? (x.SpecialToken as Record<string, unknown>).id : undefined);
      const seqId = (x: Record<string, unknown> | undefined): unknown => (isObj(x?.Sequence) ? (x.Sequence as Record<string, unknown>).id : undefined);
      let specialFirst: unknown;
      let specialLast: unknown;
      if (single.length > 1) {
        specialFirst = specialId(single[0]);
        if (truthy(specialFirst)) {
          if (!tc) {
            specialBos = specialFirst;
          } else if (!pyEq(specialFirst, specialBos) && !pyEq(specialFirst, specialCls)) {
            if (!truthy(specialBos)) tc.bos_token = specialBos = specialFirst;
            if (!truthy(specialCls)) tc.cls_token = specialCls = specialFirst;
          }
          addSpecial.set("bos", pyEq(specialFirst, specialBos) || pyEq(specialFirst, specialCls));
        }
        specialLast = specialId(single[single.length - 1]);
        if (truthy(specialLast)) {
          if (!tc) {
            specialEos = specialLast;
          } else if (!pyEq(specialLast, specialEos)) {
            if (!specialTypes.includes("eot")) {
              specialTypes = [...specialTypes, "eot"];
              tc.eot_token = specialEos;
            } else if (!specialTypes.includes("eom")) {
              specialTypes = [...specialTypes, "eom"];
              tc.eom_token = specialEos;
            }
            tc.eos_token = specialEos = specialLast;
          }
          addSpecial.set("eos", pyEq(specialLast, specialEos));
        }
      }
      if (pair.length > 0) {
        const seqStart = truthy(specialFirst) && pyEq(specialId(pair[0]), specialFirst) ? 1 : 0;
        const seqStop = truthy(specialLast) && pyEq(specialId(pair[pair.length - 1]), specialLast) ? pair.length - 1 : pair.length;
        pair = pair.slice(seqStart, seqStop);
        if (pair.length > 0) {
          const a = seqId(pair[0]);
          const b = seqId(pair[pair.length - 1]);
          if (a === "A" && b === "B" && pair.length > 2) {
            const mid = pair.slice(1, -1);
            let addSep = false;
            const e1 = specialId(mid[0]);
            if (truthy(e1) && (pyEq(e1, specialSep) || pyEq(e1, specialEos)) && !truthy(specialLast)) addSep = true;
            if (mid.length === 2) {
              const e2 = specialId(mid[1]);
              if (truthy(e2) && (pyEq(e2, specialSep) || pyEq(e2, specialEos))) addSep = true;
            }
            addSpecial.set("sep", addSep);
            if (addSep && !truthy(specialSep) && tc) tc.sep_token = specialEos;
          }
        }
      }
    }
  }
  const setSpecial = (typ: string, tid: unknown) => {
    if (!isPyInt(tid)) return;
    if (tid < 0) throw new DeepcastError(`invalid value for special token type ${typ}: ${tid}`);
    if (!specialIds.has(typ)) specialIds.set(typ, tid);
  };
  let chatTemplate: unknown;
  if (tc) {
    let alt: unknown;
    if (files.chatTemplateJinja !== undefined) alt = files.chatTemplateJinja;
    else if (isObj(files.chatTemplateJson)) alt = files.chatTemplateJson.chat_template;
    const ct = "chat_template" in tc ? tc.chat_template : alt;
    if (ct === null || ct === undefined || typeof ct === "string" || Array.isArray(ct)) chatTemplate = ct;
    for (const typ of specialTypes) {
      const addEntry = tc[`add_${typ}_token`];
      if (typeof addEntry === "boolean") addSpecial.set(typ, addEntry);
      const entry = tc[`${typ}_token`];
      let content: string;
      if (typeof entry === "string") content = entry;
      else if (isObj(entry) && typeof entry.content === "string") content = entry.content;
      else continue;
      const hit = added.find((x) => x.content === content);
      setSpecial(typ, hit?.id);
    }
  }
  // SpecialVocab._try_load_from_config_json
  for (const typ of specialTypes) {
    let id = files.config[`${typ}_token_id`];
    if ((id === undefined || id === null) && isObj(files.config.text_config)) id = files.config.text_config[`${typ}_token_id`];
    setSpecial(typ, id);
  }

  if (merges.length) out.push(kv.arr("tokenizer.ggml.merges", "STRING", merges));
  const idKeys: Record<string, string> = {
    bos: "tokenizer.ggml.bos_token_id", eos: "tokenizer.ggml.eos_token_id", unk: "tokenizer.ggml.unknown_token_id",
    sep: "tokenizer.ggml.seperator_token_id", pad: "tokenizer.ggml.padding_token_id", mask: "tokenizer.ggml.mask_token_id",
    eot: "tokenizer.ggml.eot_token_id", eom: "tokenizer.ggml.eom_token_id",
  };
  for (const [typ, id] of specialIds) {
    const key = idKeys[typ];
    if (key) out.push(kv.u32(key, id));
  }
  const addKeys: Record<string, string> = { bos: "tokenizer.ggml.add_bos_token", eos: "tokenizer.ggml.add_eos_token", sep: "tokenizer.ggml.add_sep_token" };
  for (const [typ, v] of addSpecial) {
    const key = addKeys[typ];
    if (key) out.push(kv.bool(key, v));
  }
  if (typeof chatTemplate === "string") {
    if (chatTemplate.length > 0) out.push(kv.str("tokenizer.chat_template", chatTemplate));
  } else if (Array.isArray(chatTemplate)) {
    let def: string | undefined;
    const names: string[] = [];
    for (const choice of chatTemplate) {
      if (!isObj(choice)) continue;
      const n = String(choice.name ?? "").replace(/[^A-Za-z0-9]/g, "_");
      const tmpl = choice.template;
      if (n && typeof tmpl === "string") {
        if (n === "default") def = tmpl;
        else {
          if (!names.includes(n)) names.push(n);
          if (tmpl.length > 0) out.push(kv.str(`tokenizer.chat_template.${n}`, tmpl));
        }
      }
    }
    if (names.length) out.push(kv.arr("tokenizer.chat_templates", "STRING", names));
    if (def !== undefined && def.length > 0) out.push(kv.str("tokenizer.chat_template", def));
  }
  if (normalizerLowercase !== undefined) out.push(kv.bool("tokenizer.ggml.normalizer.lowercase", normalizerLowercase));
  if (normalizerStripAccents !== undefined) out.push(kv.bool("tokenizer.ggml.normalizer.strip_accents", normalizerStripAccents));
  return out;
}

// ---------------------------------------------------------------------------------------------
// kv_b_proj split
// ---------------------------------------------------------------------------------------------

type ElemArray = Float32Array | Uint16Array | Uint8Array | Float64Array | Int8Array | Int16Array | Int32Array | Uint32Array;

/**
 * The element permutation of convert's kv_b_proj split, on any element array (f32, bf16 bits, ...):
 * `src` is kv_b_proj row-major [nHead*(qkNope+vHead), kvLora].
 *  - k_b (torch [nHead, kvLora, qkNope], ggml ne [qkNope, kvLora, nHead]): k_b[h][c][d] = src[h*(qkNope+vHead) + d][c]
 *  - v_b (torch [nHead, vHead, kvLora], ggml ne [kvLora, vHead, nHead]): v_b[h][v][c] = src[h*(qkNope+vHead) + qkNope + v][c]
 */
export function kvBSplit<T extends ElemArray>(
  src: T,
  part: "k_b" | "v_b",
  d: { nHead: number; qkNope: number; vHead: number; kvLora: number },
  dst?: T,
): T {
  const per = d.qkNope + d.vHead;
  if (src.length !== d.nHead * per * d.kvLora) throw new RangeError(`kv_b_proj has ${src.length} elements, expected ${d.nHead * per * d.kvLora}`);
  const n = d.nHead * (part === "k_b" ? d.qkNope : d.vHead) * d.kvLora;
  const out = dst ?? (new (src.constructor as new (n: number) => T)(n));
  if (out.length !== n) throw new RangeError(`dst has ${out.length} elements, expected ${n}`);
  const L = d.kvLora;
  if (part === "k_b") {
    let o = 0;
    for (let h = 0; h < d.nHead; h++) {
      const base = h * per * L;
      for (let c = 0; c < L; c++) for (let k = 0; k < d.qkNope; k++) out[o++] = src[base + k * L + c]!;
    }
  } else {
    for (let h = 0; h < d.nHead; h++) {
      const from = (h * per + d.qkNope) * L;
      out.set(src.subarray(from, from + d.vHead * L) as never, h * d.vHead * L);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// output plan: types, order, KVs for one output type
// ---------------------------------------------------------------------------------------------

export interface GgufOutputOptions extends Omit<MixOptions, "ftype" | "nLayer" | "nExpert" | "nHead" | "nHeadKv"> {
  /** Output type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q2_K_S, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K. */
  ftype: string | number;
  /** convert --fp8-as-q8: FP8-origin tensors of 2+ dims stored as Q8_0 (only for F32/F16/BF16 outputs). */
  fp8AsQ8?: boolean;
}

export interface GgufOutputTensor {
  name: string;
  /** Dims as written (ggml order). */
  ne: number[];
  /** Output type. */
  type: GgmlTypeInfo;
  /** Type of this tensor in llama.cpp's BF16 conversion (F32 or BF16): the values the output is made from. */
  inputType: GgmlTypeInfo;
  source: GgufTensorSource;
  /** PyTorch order of the full tensor. */
  shape: number[];
  fp8: boolean;
  /** llama-quantize's decision, for quantized outputs. */
  mix?: MixTensorOut;
}

export interface GgufOutputPlan {
  ftype: FtypeInfo;
  /**
   * "convert": like convert_hf_to_gguf --outtype (F32/F16/BF16): convert's tensor order and KV order.
   * "quantize": like convert --outtype bf16 followed by llama-quantize: tensors sorted by (layer, name),
   * KVs with general.quantization_version and general.file_type moved to the end, trailing 1-dims dropped.
   */
  style: "convert" | "quantize";
  kvs: GgufKV[];
  tensors: GgufOutputTensor[];
  mix?: MixPlan;
}

/** Chooses the type of every tensor and the file's tensor/KV order for one output type. */
export function planGgufOutput(model: Deepseek2GgufModel, opts: GgufOutputOptions): GgufOutputPlan {
  const ftype = parseFtype(opts.ftype);
  const F32 = ggmlType("F32");
  const BF16 = ggmlType("BF16");
  const Q8_0 = ggmlType("Q8_0");
  const float = !ftype.defaultType.quantized;
  const overrides = opts.outputTensorType !== undefined || opts.tokenEmbeddingType !== undefined;
  if (opts.fp8AsQ8 && !float) throw new DeepcastError(`--fp8-as-q8 applies to F32/F16/BF16 outputs, not ${ftype.name}`);
  if (float && !overrides) {
    const kvs = model.kvs.map((e) => (e.key === "general.file_type" ? kv.u32("general.file_type", ftype.id) : e));
    const tensors = model.tensors.map((t): GgufOutputTensor => {
      let type = t.forceF32 ? F32 : ftype.defaultType;
      // gguf-py's Q8_0 needs ne0 % 32 == 0, else it warns and falls back to F16
      if (opts.fp8AsQ8 && t.fp8 && !t.forceF32 && t.shape.length >= 2) type = t.ne[0]! % Q8_0.blockSize === 0 ? Q8_0 : ggmlType("F16");
      return { name: t.name, ne: [...t.ne], type, inputType: t.forceF32 ? F32 : BF16, source: t.source, shape: t.shape, fp8: t.fp8 };
    });
    return { ftype, style: "convert", kvs, tensors };
  }
  const input = model.tensors.map((t) => ({ name: t.name, ne: t.ne, type: t.forceF32 ? F32 : BF16 }));
  const mix = planQuantMix(input, {
    ...opts,
    ftype: ftype.id,
    nLayer: model.hparams.blockCount,
    nExpert: model.hparams.nExpert,
    nHead: model.hparams.nHead,
    nHeadKv: model.hparams.nHeadKv,
  });
  const byName = new Map(model.tensors.map((t) => [t.name, t]));
  const tensors = mix.tensors.map((m): GgufOutputTensor => {
    const t = byName.get(m.name)!;
    return { name: m.name, ne: m.ne, type: m.type, inputType: m.inputType, source: t.source, shape: t.shape, fp8: t.fp8, mix: m };
  });
  const kvs = [...model.kvs];
  setKvLast(kvs, kv.u32("general.quantization_version", 2));
  setKvLast(kvs, kv.u32("general.file_type", ftype.id));
  return { ftype, style: "quantize", kvs, tensors, mix };
}
