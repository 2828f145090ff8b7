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
import { deepseek2Format, fillBid, namePattern, type MapEntry } from "../formats/deepseek2-names.js";
import { FP8_BLOCK, weightOfScale } from "../formats/fp8.js";
import type { Dtype } from "../io/dtypes.js";
import { ggmlType, type GgmlType } from "../formats/ggml-types.js";
import { kv, setKvInPlace, setKvLast, type GgufKV } from "../io/gguf-kv.js";
import { parseFtype, planQuantMix, type FtypeInfo, type MixOptions, type MixPlan, type MixTensorOut } from "../quant/mix.js";
import type { HfModelFiles, HfTensorHeader } from "./hf-model-files.js";
import { idToTitle, modelIdComponents, sizeLabel, type ModelIdComponents } from "./gguf-naming.js";
import { tokenizerKvs } from "./gguf-tokenizer.js";
import { compareCodePoints, isObj, isPyInt, pyEq, truthy } from "./python-compat.js";

interface CompiledEntry extends MapEntry {
  re: RegExp;
}

/** First of `keys` present in the HF config. */
function findHparam(h: Record<string, unknown>, keys: readonly string[]): unknown {
  for (const k of keys) if (k in h) return h[k];
  return undefined;
}

function num(h: Record<string, unknown>, key: string, what = key): number {
  const v = h[key];
  if (typeof v !== "number") throw new DeepcastError(`config.json: ${what} is missing or not a number`, { file: "config.json" });
  return v;
}

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
    const w = quantMethod === "fp8" ? weightOfScale(name) : null;
    if (w !== null) {
      if (!all.has(w)) throw new DeepcastError(`scale ${name} has no weight ${w}`, { tensor: name, file: v.file });
      scales.set(w, v);
      continue;
    }
    if (quantMethod === "fp8" && fmt.dropSuffixes.some((s) => name.endsWith(s))) continue;
    order.push(name);
  }
  const blockSize = Array.isArray(quant?.weight_block_size) ? (quant!.weight_block_size as number[]) : [FP8_BLOCK, FP8_BLOCK];
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
  const entries: CompiledEntry[] = fmt.tensors.map((e) => ({ ...e, re: namePattern(e.hf) }));
  const f32Names = fmt.f32.names.map(namePattern);
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
          emit(fillBid(stackEntry.gguf, bidPart), [nExpert, ...first.shape], { kind: "stack", experts: list }, list.some((r) => r.scaleInv !== undefined));
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
      emit(fillBid(entry.k_b!, bid), [nKvHeadHf, cols, qkNope], { kind: "kv_b", part: "k_b", ...base }, r.scaleInv !== undefined);
      emit(fillBid(entry.v_b!, bid), [nKvHeadHf, vHead, cols], { kind: "kv_b", part: "v_b", ...base }, r.scaleInv !== undefined);
      continue;
    }
    if (entry.kind !== "copy" || !entry.gguf) throw new DeepcastError("cannot map this tensor to a GGUF name", { tensor: name });
    emit(fillBid(entry.gguf, bid), r.shape, { kind: "tensor", src: r }, r.scaleInv !== undefined);
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
  type: GgmlType;
  /** Type of this tensor in llama.cpp's BF16 conversion (F32 or BF16): the values the output is made from. */
  inputType: GgmlType;
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
