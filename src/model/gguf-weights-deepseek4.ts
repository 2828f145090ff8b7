/**
 * A llama.cpp `deepseek4` GGUF (ours or convert_hf_to_gguf's, any type llama-quantize made of it)
 * read back under the Hugging Face DeepSeek-V4 names the forward pass reads (no `model.` prefix),
 * through the inverse of formats/deepseek4-gguf.json:
 *
 *  - copies: every V4 tensor is stored with its HF shape reversed (wo_a too: the 3-D grouped view is
 *    the loader's, the file holds the HF [o_groups*o_lora, H*head_dim/o_groups] matrix);
 *  - routed experts: `layers.L.ffn.experts.E.w{1,2,3}.weight` is slab E of the stacked
 *    `blk.L.ffn_{gate,down,up}_exps.weight` (MXFP4 as converted, whatever llama-quantize made of it);
 *  - hash routing: `layers.L.ffn.gate.tid2eid` [vocab, k] is the I32 `blk.L.ffn_gate_tid2eid.weight`,
 *    handed out as float32 expert indices (exact);
 *  - not restorable, and not needed: the `.scale` tensors (every weight is read dequantized), the
 *    hash layers' `ffn.gate.bias` (the converter drops it), the MTP block (not converted by default).
 *
 * The config: convert_hf_to_gguf's V4 keys (src/convert/gguf-kvs-deepseek4.ts) turned back into the
 * config.json keys they were written from.
 */
import { DeepcastError } from "../errors.js";
import { deepseek4Format } from "../formats/deepseek4-names.js";
import { namePattern } from "../formats/deepseek2-names.js";
import { archKey, Keys } from "../formats/gguf-keys.js";
import type { GgufTensorInfo, GgufTensorStore } from "../io/gguf-reader.js";
import { f32Decimal } from "../io/gguf-kv.js";
import { checkV4Config } from "../io/hf-config-v4.js";
import { forwardTensorNamesV4 } from "./forward-v4.js";
import type { GgufNameLayout, GgufWeightSource, Resolved } from "./gguf-weights.js";

export const DEEPSEEK4_ARCH = "deepseek4";

/** llama_expert_gating_func_type LLAMA_EXPERT_GATING_FUNC_TYPE_SQRTSOFTPLUS (the only one deepseek4 loads). */
const GATING_SQRTSOFTPLUS = 4;

interface V4Rules {
  /** GGUF root name -> HF. */
  rootToHf: Map<string, string>;
  /** HF root name -> GGUF. */
  root: Record<string, string>;
  /** HF name after `layers.{bid}.` -> GGUF name after `blk.{bid}.` (MTP-only `nextn.*` names left out). */
  layer: Map<string, string>;
  layerToHf: Map<string, string>;
  /** proj (w1/w2/w3) <-> GGUF stacked name after `blk.{bid}.`. */
  expertGguf: Map<string, string>;
  expertToHf: Map<string, string>;
  expertRe: RegExp;
  hashHf: RegExp;
  hashGguf: string;
}

let rulesCache: V4Rules | undefined;
function rules(): V4Rules {
  if (rulesCache) return rulesCache;
  const fmt = deepseek4Format();
  const layer = new Map(Object.entries(fmt.layer).filter(([hf]) => !hf.startsWith("nextn.")));
  const expertGguf = new Map(fmt.experts.expertOrder.map(([proj, gguf]) => [proj, gguf] as const));
  rulesCache = {
    root: fmt.root,
    rootToHf: new Map(Object.entries(fmt.root).map(([hf, g]) => [g, hf])),
    layer,
    layerToHf: new Map([...layer].map(([hf, g]) => [g, hf])),
    expertGguf,
    expertToHf: new Map([...expertGguf].map(([p, g]) => [g, p])),
    expertRe: new RegExp(namePattern(fmt.experts.pattern.replace("{part}", "weight")).source.replace("{proj}", "(?<proj>[^.]+)")),
    hashHf: namePattern(fmt.hash.hf),
    hashGguf: fmt.hash.gguf,
  };
  return rulesCache;
}

/** Where an HF V4 name is stored: its GGUF tensor, as a copy, an index table, or slab `e` of stacked experts. */
type Place = { gguf: string; kind: "copy" | "ids" } | { gguf: string; kind: "expert"; e: number };

function placeOf(name: string): Place | undefined {
  const R = rules();
  if (R.root[name] !== undefined) return { gguf: R.root[name], kind: "copy" };
  const hash = R.hashHf.exec(name);
  if (hash) return { gguf: `blk.${hash.groups!.bid}.${R.hashGguf}`, kind: "ids" };
  const ex = R.expertRe.exec(name);
  if (ex) {
    const g = R.expertGguf.get(ex.groups!.proj!);
    return g === undefined ? undefined : { gguf: `blk.${ex.groups!.bid}.${g}`, kind: "expert", e: Number(ex.groups!.xid) };
  }
  const m = /^layers\.(\d+)\.(.+)$/.exec(name);
  const g = m ? R.layer.get(m[2]!) : undefined;
  return g === undefined ? undefined : { gguf: `blk.${m![1]}.${g}`, kind: "copy" };
}

/** The HF names of a deepseek4 GGUF and the tensors they are read from. */
export function deepseek4Layout(reader: GgufTensorStore): GgufNameLayout {
  const R = rules();
  const file = reader.path;
  return {
    resolve(name: string): Resolved | null {
      const place = placeOf(name);
      const t = place && reader.tensor(place.gguf);
      if (!place || !t) return null;
      if (place.kind === "ids") {
        if (t.type.name !== "I32" || t.ne.length !== 2) {
          throw new DeepcastError(`hash-routing table is ${t.type.name} ne [${t.ne.join(", ")}], expected I32 [k, vocab]`, { file, tensor: t.name });
        }
        return { kind: "ids", t, shape: [t.ne[1]!, t.ne[0]!] };
      }
      if (place.kind === "expert") {
        if (t.ne.length > 3) throw new DeepcastError(`tensor has ${t.ne.length} dims, expected at most 3`, { file, tensor: t.name });
        // llama-quantize drops trailing 1-dims: a single expert is stored [in, out].
        const [ne0, ne1 = 1, ne2 = 1] = t.ne;
        return place.e < ne2 ? { kind: "expert", t, e: place.e, shape: [ne1, ne0!] } : null;
      }
      return { kind: "copy", t, shape: [...t.ne].reverse() };
    },

    hfNames(): string[] {
      const out: string[] = [];
      for (const t of reader.tensors) {
        const root = R.rootToHf.get(t.name);
        if (root !== undefined) {
          out.push(root);
          continue;
        }
        const m = /^blk\.(\d+)\.(.+)$/.exec(t.name);
        if (!m) continue;
        const [, bid, rest] = m;
        if (rest === R.hashGguf) {
          out.push(`layers.${bid}.${deepseek4Format().hash.hf.split("{bid}.")[1]}`);
          continue;
        }
        const proj = R.expertToHf.get(rest!);
        if (proj !== undefined) {
          const n = t.ne[2] ?? 1;
          const pattern = deepseek4Format().experts.pattern.replace("{bid}", bid!).replace("{proj}", proj).replace("{part}", "weight");
          for (let e = 0; e < n; e++) out.push(pattern.replace("{xid}", String(e)));
          continue;
        }
        const hf = R.layerToHf.get(rest!);
        if (hf !== undefined) out.push(`layers.${bid}.${hf}`);
      }
      return out;
    },

    readsRaw(t: GgufTensorInfo): boolean {
      return t.type.name === "I32" && t.name.endsWith(`.${R.hashGguf}`);
    },
  };
}

/**
 * The config.json a deepseek4 GGUF was converted from, as far as its metadata keeps it: every key
 * the forward pass needs (DeepseekV4ForCausalLM's, spec §1.3), from the `deepseek4.*` keys
 * convert_hf_to_gguf.py wrote. Float metadata is float32 and comes back as the shortest decimal
 * that rounds to it. Not kept, so not restored: quantization_config and expert_dtype (the tensors
 * are stored dequantized or re-quantized), num_nextn_predict_layers (0: the MTP block is not in a
 * default conversion; an MTP-only GGUF is refused, it has no trunk to run).
 */
export function deepseek4ConfigJson(reader: GgufTensorStore): Record<string, unknown> {
  const A = DEEPSEEK4_ARCH;
  const file = reader.path;
  const bad = (msg: string) => new DeepcastError(msg, { file, code: "CONFIG_MISMATCH" });
  const arch = reader.value(Keys.General.ARCHITECTURE);
  if (arch !== A) throw bad(`GGUF architecture is ${JSON.stringify(arch)}, expected "${A}" (DeepSeek-V4)`);
  const key = (k: string) => archKey(k, A);
  const get = (k: string): number | undefined => {
    const v = reader.value(key(k));
    if (v === undefined) return undefined;
    if (typeof v === "bigint") return Number(v);
    if (typeof v !== "number") throw bad(`GGUF metadata ${key(k)} is ${JSON.stringify(v)}, expected a number`);
    return v;
  };
  const need = (k: string): number => {
    const v = get(k);
    if (v === undefined) throw bad(`GGUF metadata has no ${key(k)}`);
    return v;
  };
  const needF = (k: string) => f32Decimal(need(k));
  const array = (k: string): number[] => {
    const e = reader.kv(key(k));
    if (!e) throw bad(`GGUF metadata has no ${key(k)}`);
    if (e.type !== "ARRAY" || !e.value.every((x) => typeof x === "number")) throw bad(`GGUF metadata ${key(k)} is not an array of numbers`);
    return e.value as number[];
  };

  if (get(Keys.LLM.NEXTN_PREDICT_LAYERS) !== undefined) {
    throw new DeepcastError(`an MTP-only GGUF (to-gguf --mtp: ${key(Keys.LLM.NEXTN_PREDICT_LAYERS)} is set) has no trunk layers for the forward pass; give the main model's GGUF`, { file, code: "UNSUPPORTED" });
  }
  const embd = reader.tensor("token_embd.weight");
  if (!embd || embd.ne.length !== 2) throw bad("GGUF has no 2-D token_embd.weight");
  const gating = need(Keys.LLM.EXPERT_GATING_FUNC);
  if (gating !== GATING_SQRTSOFTPLUS) throw new DeepcastError(`${key(Keys.LLM.EXPERT_GATING_FUNC)} ${gating} is not supported (DeepSeek-V4 routes by sqrtsoftplus, 4)`, { file, code: "UNSUPPORTED" });
  const headDim = need(Keys.Attention.KEY_LENGTH);
  if (need(Keys.Attention.VALUE_LENGTH) !== headDim) throw bad(`${key(Keys.Attention.VALUE_LENGTH)} differs from ${key(Keys.Attention.KEY_LENGTH)} (DeepSeek-V4 has K = V)`);
  const blocks = need(Keys.LLM.BLOCK_COUNT);
  // convert writes the config's swiglu_limit once per block into both arrays
  const clampExp = array(Keys.LLM.SWIGLU_CLAMP_EXP);
  const clampShexp = array(Keys.LLM.SWIGLU_CLAMP_SHEXP);
  const limit = clampExp[0];
  if (limit === undefined || ![...clampExp, ...clampShexp].every((x) => x === limit)) {
    throw bad(`${key(Keys.LLM.SWIGLU_CLAMP_EXP)} / ${key(Keys.LLM.SWIGLU_CLAMP_SHEXP)} are not one swiglu_limit for every block (${JSON.stringify(clampExp)}, ${JSON.stringify(clampShexp)})`);
  }
  const normKv = reader.value(key(Keys.LLM.EXPERT_WEIGHTS_NORM));
  if (normKv !== undefined && typeof normKv !== "boolean") throw bad(`GGUF metadata ${key(Keys.LLM.EXPERT_WEIGHTS_NORM)} is ${JSON.stringify(normKv)}, expected true or false`);
  const raw: Record<string, unknown> = {
    architectures: ["DeepseekV4ForCausalLM"],
    model_type: "deepseek_v4",
    hidden_act: "silu",
    vocab_size: embd.ne[1],
    hidden_size: need(Keys.LLM.EMBEDDING_LENGTH),
    num_hidden_layers: blocks,
    num_attention_heads: need(Keys.Attention.HEAD_COUNT),
    num_key_value_heads: need(Keys.Attention.HEAD_COUNT_KV),
    head_dim: headDim,
    qk_rope_head_dim: need(Keys.Rope.DIMENSION_COUNT),
    q_lora_rank: need(Keys.Attention.Q_LORA_RANK),
    o_lora_rank: need(Keys.Attention.OUTPUT_LORA_RANK),
    o_groups: need(Keys.Attention.OUTPUT_GROUP_COUNT),
    n_routed_experts: need(Keys.LLM.EXPERT_COUNT),
    n_shared_experts: need(Keys.LLM.EXPERT_SHARED_COUNT),
    num_experts_per_tok: need(Keys.LLM.EXPERT_USED_COUNT),
    moe_intermediate_size: need(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH),
    scoring_func: "sqrtsoftplus",
    // not stored: V4 always selects with the bias (noaux_tc); hash layers ignore it
    topk_method: "noaux_tc",
    norm_topk_prob: normKv === true,
    routed_scaling_factor: needF(Keys.LLM.EXPERT_WEIGHTS_SCALE),
    swiglu_limit: f32Decimal(limit),
    num_hash_layers: need(Keys.LLM.HASH_LAYER_COUNT),
    sliding_window: need(Keys.Attention.SLIDING_WINDOW),
    index_n_heads: need(Keys.Indexer.HEAD_COUNT),
    index_head_dim: need(Keys.Indexer.KEY_LENGTH),
    index_topk: need(Keys.Indexer.TOP_K),
    hc_mult: need(Keys.HyperConnection.COUNT),
    hc_sinkhorn_iters: need(Keys.HyperConnection.SINKHORN_ITERATIONS),
    hc_eps: needF(Keys.HyperConnection.EPSILON),
    rope_theta: needF(Keys.Rope.FREQ_BASE),
    compress_rope_theta: needF(Keys.Attention.COMPRESS_ROPE_FREQ_BASE),
    compress_ratios: array(Keys.Attention.COMPRESS_RATIOS),
    rms_norm_eps: needF(Keys.Attention.LAYERNORM_RMS_EPS),
    max_position_embeddings: need(Keys.LLM.CONTEXT_LENGTH),
    num_nextn_predict_layers: 0,
    tie_word_embeddings: reader.tensor("output.weight") === undefined,
  };
  const scaling = reader.value(key(Keys.Rope.SCALING_TYPE));
  if (scaling !== undefined && scaling !== "none") {
    if (scaling !== "yarn") throw new DeepcastError(`${key(Keys.Rope.SCALING_TYPE)} ${JSON.stringify(scaling)} is not supported (DeepSeek-V4 uses yarn)`, { file, code: "UNSUPPORTED" });
    const rs: Record<string, unknown> = {
      type: "yarn",
      factor: needF(Keys.Rope.SCALING_FACTOR),
      original_max_position_embeddings: need(Keys.Rope.SCALING_ORIG_CTX_LEN),
    };
    const bf = get(Keys.Rope.SCALING_YARN_BETA_FAST);
    const bs = get(Keys.Rope.SCALING_YARN_BETA_SLOW);
    if (bf !== undefined) rs.beta_fast = f32Decimal(bf);
    if (bs !== undefined) rs.beta_slow = f32Decimal(bs);
    raw.rope_scaling = rs;
  }
  const bos = reader.value(Keys.Tokenizer.BOS_ID);
  const eos = reader.value(Keys.Tokenizer.EOS_ID);
  if (typeof bos === "number") raw.bos_token_id = bos;
  if (typeof eos === "number") raw.eos_token_id = eos;
  return raw;
}

/**
 * A deepseek4 GGUF's metadata against its tensors before any pass: they agree as a V4 config.json
 * must with its checkpoint (checkV4Config: dimensions, compress ratios against the compressors and
 * indexers, hash layers against tid2eid; the tensors under their HF names and shapes, experts
 * unpacked), and every tensor the V4 pass reads is there (NOT_FOUND).
 */
export function checkDeepseek4Gguf(src: GgufWeightSource<GgufTensorStore>): void {
  const file = src.reader.path;
  const names = src.hfNames();
  try {
    checkV4Config(deepseek4ConfigJson(src.reader), {
      names: () => names,
      shape: (n) => (src.has(n) ? src.shape(n) : undefined),
      dtype: (n) => (!src.has(n) ? undefined : src.ggufTensors(n).tensors[0]!.type.name === "I32" ? "I32" : "F32"),
    }, file);
  } catch (e) {
    if (e instanceof DeepcastError) {
      throw new DeepcastError(`GGUF metadata (${DEEPSEEK4_ARCH}.*) disagrees with the tensors: ${e.message.replace(/^config\.json: /, "").replace(/ \(file [^)]*\)$/, "")}`, { file, code: e.code, ...(e.tensor !== undefined ? { tensor: e.tensor } : {}) });
    }
    throw e;
  }
  const missing = forwardTensorNamesV4(src.config, (n) => src.has(n)).find((n) => !src.has(n));
  if (missing !== undefined) {
    const gguf = placeOf(missing)?.gguf;
    throw new DeepcastError(`the GGUF has no ${gguf ?? "tensor"} (${missing}), which the DeepSeek-V4 forward pass reads`, { file, tensor: gguf ?? missing, code: "NOT_FOUND" });
  }
}
