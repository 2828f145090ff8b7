/**
 * The tensors `deepcast to-gguf` writes for a DeepSeek-V2/V3 checkpoint, decided from config.json and
 * the safetensors headers only (no tensor data): each GGUF tensor with its sources in the HF
 * checkpoint, in the order llama.cpp's own convert_hf_to_gguf.py (v0.4.0) writes them. The metadata
 * is ./gguf-kvs.ts; the per-output-type plan (types, llama-quantize's order) is ./gguf-output.ts.
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
import { fillBid, mlaFormats, namePattern, type MapEntry } from "../formats/deepseek2-names.js";
import { FP8_BLOCK, weightOfScale } from "../formats/fp8.js";
import type { Dtype } from "../io/dtypes.js";
import type { GgufKV } from "../io/gguf-kv.js";
import { configNumber, type HfModelFiles, type HfTensorHeader } from "./hf-model-files.js";
import { buildDeepseek2Kvs, type Deepseek2KvOptions, type ParamCounts } from "./gguf-kvs.js";
import { deepseek32Kvs } from "./gguf-kvs-deepseek32.js";
import { compareCodePoints, isObj } from "./python-compat.js";

interface CompiledEntry extends MapEntry {
  re: RegExp;
}

export interface HfSourceRef {
  file: string;
  name: string;
  dtype: Dtype;
  /** PyTorch order. */
  shape: number[];
  /** Block scale of an FP8 weight (multiply, 128x128 blocks): F32 (V3 `_scale_inv`) or F8_E8M0 (V4 `.scale`). */
  scaleInv?: { file: string; name: string; dtype: Dtype; shape: number[] };
}

export type GgufTensorSource =
  | { kind: "tensor"; src: HfSourceRef }
  /** Experts 0..E-1 stacked along a new outer dim: output slab e = experts[e]. */
  | { kind: "stack"; experts: HfSourceRef[] }
  /** One half of kv_b_proj, see kvBSplit. */
  | { kind: "kv_b"; part: "k_b" | "v_b"; src: HfSourceRef; nHead: number; qkNope: number; vHead: number; kvLora: number }
  /**
   * V4 routed experts: each expert's I8 weight [rows, cols/2] (two FP4 codes per byte, element 2k in the
   * low nibble) and its E8M0 scale [rows, cols/32], repacked into ggml MXFP4 blocks; slab e = expert e.
   */
  | { kind: "mxfp4"; experts: { weight: HfSourceRef; scale: HfSourceRef }[] }
  /** An integer table cast to I32 (V4's tid2eid, I64 or I32 in the checkpoint). */
  | { kind: "i32"; src: HfSourceRef }
  /** Row-wise concatenation along the last dim: out[r] = [parts[0][r], parts[1][r], ...] (V4's MTP eh_proj). */
  | { kind: "concat"; parts: HfSourceRef[] };

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
  /**
   * The type convert writes whatever --outtype (V4: Q8_0 for FP8 sources, MXFP4 experts, BF16/F32 as the
   * source, I32 tables); absent: F32 when forceF32, else the output type.
   */
  convertType?: string;
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

/** What the output planner needs of any generation's plan. */
export interface GgufModel {
  /** general.architecture. */
  architecture: string;
  hparams: { blockCount: number; nHead: number; nHeadKv: number; nExpert: number };
  /** KVs in convert_hf_to_gguf order. */
  kvs: GgufKV[];
  /** In convert_hf_to_gguf order. */
  tensors: GgufModelTensor[];
  params: ParamCounts;
  /** HF tensors that were skipped. */
  skipped: string[];
  /** general.file_type convert writes whatever --outtype (V4: MOSTLY_MXFP4_MOE); absent: the output type's. */
  convertFileType?: number;
}

export interface Deepseek2GgufModel extends GgufModel {
  architecture: string;
  hparams: Deepseek2Hparams;
  /** KVs in convert_hf_to_gguf order; general.file_type = 32 (BF16) until an output type is chosen. */
  kvs: GgufKV[];
  /** In convert_hf_to_gguf order. */
  tensors: GgufModelTensor[];
  params: ParamCounts;
  /** HF tensors that were skipped (MTP layers, tied lm_head, ignored suffixes). */
  skipped: string[];
}

/**
 * Builds the GGUF tensor list (with sources) and metadata that llama.cpp's convert_hf_to_gguf.py
 * produces for a DeepSeek-V2/V3 checkpoint.
 */
export function planDeepseek2Gguf(files: HfModelFiles, opts: Deepseek2KvOptions & { mtp?: "default" | "only" | "none" } = {}): Deepseek2GgufModel {
  const h = files.config;
  const arch = Array.isArray(h.architectures) ? h.architectures[0] : undefined;
  const formats = mlaFormats();
  const fmt = formats.find((f) => typeof arch === "string" && f.hfArchitectures.includes(arch));
  if (!fmt) {
    throw new DeepcastError(`unsupported architecture ${JSON.stringify(arch)}: expected one of ${formats.flatMap((f) => f.hfArchitectures).join(", ")}`, { file: "config.json" });
  }
  const nMain = configNumber(h, "num_hidden_layers");
  // deepseek32 keeps the MTP block (block_count + num_nextn_predict_layers) unless --no-mtp
  const keepMtp = fmt.mtp?.keepLayers === true && opts.mtp !== "none";
  const mtpOnly = keepMtp && opts.mtp === "only";
  if (opts.mtp === "only" && !keepMtp) throw new DeepcastError(`--mtp: llama.cpp does not export the MTP block of ${arch}`, { code: "USAGE" });
  const nNextn = typeof h.num_nextn_predict_layers === "number" ? h.num_nextn_predict_layers : 0;
  const blockCount = nMain + (keepMtp ? nNextn : 0);
  if (fmt.mtp?.requireAddBosToken) {
    const tc = files.tokenizerConfig;
    if (!isObj(tc) || tc.add_bos_token !== true) {
      throw new DeepcastError("tokenizer_config.json must set add_bos_token to true (llama.cpp's converter asserts it for this model)", { file: "tokenizer_config.json" });
    }
  }
  const nKvHeadHf = configNumber(h, "num_key_value_heads");
  const qkNope = configNumber(h, "qk_nope_head_dim");
  const qkRope = configNumber(h, "qk_rope_head_dim");
  const vHead = configNumber(h, "v_head_dim");
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
    if (mtpOnly && !(layer && Number(layer[1]) >= nMain) && !fmt.mtp!.trunkForMtpOnly.includes(name)) {
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

  const params = paramCounts(tensors);

  const kvs = buildDeepseek2Kvs(files, opts, params, { blockCount, kvLora, qkNope, qkRope, vHead, nExpert },
    fmt.architecture === "deepseek32" ? deepseek32Kvs(keepMtp) : { name: fmt.architecture });
  return {
    architecture: fmt.architecture,
    hparams: {
      blockCount,
      nHead: configNumber(h, "num_attention_heads"),
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

/** gguf_writer.get_total_parameter_count over the tensors as written (logical shapes). */
export function paramCounts(tensors: readonly { name: string; shape: readonly number[] }[]): ParamCounts {
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
  return { total, shared, expert, expertCount: nExpertTensors > 0 ? Math.floor(expertSum / nExpertTensors) : 0 };
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

