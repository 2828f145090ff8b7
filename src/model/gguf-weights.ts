/**
 * The forward pass's weights from a llama.cpp `deepseek2` GGUF (DeepSeek-V2/V3) or `deepseek32` GGUF
 * (DeepSeek-V3.2; ours or llama.cpp's, any type ./quant/ggml.ts dequantizes, single file or split):
 * HF names are mapped to GGUF names through the inverse of formats/deepseek2-gguf.json (or
 * deepseek32-gguf.json, which adds the indexer and the nextn block), and each read dequantizes only
 * the rows asked for.
 *
 *  - copies: HF [out, in] = GGUF ne [in, out], row r of HF = row r of ggml, nothing rearranged;
 *  - routed experts: `model.layers.L.mlp.experts.E.<proj>.weight` is slab E of the stacked
 *    `blk.L.ffn_<proj>_exps.weight` (ne [in, out, n_expert]), read alone;
 *  - kv_b_proj: rebuilt from `attn_k_b` (ne [qk_nope, kv_lora, n_head]: k_b[h][c][d] = kv_b[h*(nope+v) + d][c])
 *    and `attn_v_b` (ne [kv_lora, v_head, n_head]: v_b[h][v][c] = kv_b[h*(nope+v) + nope + v][c]), the
 *    inverse of gguf-plan's kvBSplit, for just the heads whose rows are asked for; a legacy GGUF with
 *    the unsplit `attn_kv_b` is read as a copy.
 *
 * The ModelConfig comes from the `deepseek2.*` / `deepseek32.*` metadata, turned back into the HF config.json keys
 * convert_hf_to_gguf.py took them from and parsed by parseModelConfig. Float metadata is stored as
 * float32; each value is read back as the shortest decimal that rounds to it (1e-6 stays 1e-6), so
 * the config equals the HF one and the forward pass is bit-identical to the HF source's.
 */
import { DeepcastError } from "../errors.js";
import { GgufReader, type GgufTensorInfo, type GgufTensorStore } from "../io/gguf-reader.js";
import { deepseek2Format, deepseek32Format, type Deepseek2Format } from "../formats/deepseek2-names.js";
import { archKey, Keys } from "../formats/gguf-keys.js";
import { f32Decimal } from "../io/gguf-kv.js";
import { parseV4Config } from "../io/hf-config-v4.js";
import { ggmlDequantTypes, rowBytes } from "../formats/ggml-types.js";
import { dequantizeRows } from "../quant/ggml.js";
import { parseModelConfig, type ModelConfig } from "./config.js";
import type { StoredMatrix } from "./ops.js";
import type { WeightSource } from "./weights.js";
import { DEEPSEEK4_ARCH, deepseek4ConfigJson, deepseek4Layout } from "./gguf-weights-deepseek4.js";

/** Values smaller than this (elements) are dequantized on one thread. */
const PARALLEL_MIN = 1 << 22;
/** The GGUF architectures read here, each with its name map. */
const FORMATS: Record<string, () => Deepseek2Format> = { deepseek2: deepseek2Format, deepseek32: deepseek32Format };

export interface GgufWeightSourceOptions {
  /** Threads for dequantization (default 1). */
  threads?: number;
}

export type Resolved =
  /** A GGUF tensor read as is (its HF shape is the reversed ne). */
  | { kind: "copy"; t: GgufTensorInfo; shape: number[] }
  /** Expert `e` of a stacked [n_expert, out, in] tensor. */
  | { kind: "expert"; t: GgufTensorInfo; e: number; shape: number[] }
  /** An I32 index table [rows, ne0] (DeepSeek-V4's tid2eid), handed out as float32 (exact below 2^24). */
  | { kind: "ids"; t: GgufTensorInfo; shape: number[] }
  /** kv_b_proj from its split halves. */
  | { kind: "kv_b"; kb: GgufTensorInfo; vb: GgufTensorInfo; nHead: number; nope: number; v: number; kvr: number; shape: number[] };

/**
 * How another architecture's GGUF names map to its HF names (the deepseek2 map is this file's own):
 * DeepSeek-V4's is ./gguf-weights-deepseek4.ts.
 */
export interface GgufNameLayout {
  /** The HF name's GGUF tensor(s), or null when the model has no such tensor. */
  resolve(name: string): Resolved | null;
  /** The HF names the GGUF provides. */
  hfNames(): string[];
  /** Tensors read as integers (no ggml dequantizer needed). */
  readsRaw(t: GgufTensorInfo): boolean;
}

interface NameRule {
  re: RegExp;
  kind: "copy" | "stack" | "kv_b_split";
  gguf?: string;
  kB?: string;
  vB?: string;
  /** HF template (for listing names). */
  hf: string;
}

const LEGACY_KV_B = "blk.{bid}.attn_kv_b.weight";

function compile(p: string): RegExp {
  const esc = p.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{bid\}/g, "(?<bid>\\d+)").replace(/\{xid\}/g, "(?<xid>\\d+)");
  return new RegExp(`^${esc}$`);
}

const rulesCache = new Map<string, NameRule[]>();
function rules(arch: string): NameRule[] {
  let r = rulesCache.get(arch);
  if (r) return r;
  r = FORMATS[arch]!().tensors.map((e) => ({
    re: compile(e.hf),
    kind: e.kind,
    hf: e.hf,
    ...(e.gguf !== undefined ? { gguf: e.gguf } : {}),
    ...(e.k_b !== undefined ? { kB: e.k_b } : {}),
    ...(e.v_b !== undefined ? { vB: e.v_b } : {}),
  }));
  rulesCache.set(arch, r);
  return r;
}

/** ne as 3 dims (trailing 1-dims dropped by llama-quantize put back); more than 3 is an error. */
function dims3(t: GgufTensorInfo): [number, number, number] {
  if (t.ne.length > 3) throw new DeepcastError(`tensor has ${t.ne.length} dims, expected at most 3`, { tensor: t.name });
  return [t.ne[0]!, t.ne[1] ?? 1, t.ne[2] ?? 1];
}

const fill = (template: string, bid: string | undefined) => (bid === undefined ? template : template.replace(/\{bid\}/g, bid));

export { f32Decimal };

export class GgufWeightSource<R extends GgufTensorStore = GgufReader> implements WeightSource {
  private readonly cache = new Map<string, Resolved | null>();

  private constructor(
    readonly reader: R,
    readonly config: ModelConfig,
    private readonly threads: number,
    /** general.architecture: deepseek2, deepseek32 or deepseek4. */
    readonly arch: string,
    /** Another architecture's names (undefined: deepseek2's or deepseek32's, by this file's rules). */
    private readonly layout?: GgufNameLayout,
  ) {}

  /** Opens a GGUF (a single file, or any file of a split model) and reads its metadata. */
  static async open(path: string, opts: GgufWeightSourceOptions = {}): Promise<GgufWeightSource<GgufReader>> {
    return GgufWeightSource.fromStore(await GgufReader.open(path), opts);
  }

  /** The model of a GGUF tensor store (a file's reader, or tensors made on demand); closes the store on failure. */
  static async fromStore<S extends GgufTensorStore>(reader: S, opts: GgufWeightSourceOptions = {}): Promise<GgufWeightSource<S>> {
    try {
      const threads = Math.max(1, opts.threads ?? 1);
      const arch = String(reader.value(Keys.General.ARCHITECTURE));
      const src = arch === DEEPSEEK4_ARCH
        ? new GgufWeightSource(reader, parseGgufConfig(parseV4Config, deepseek4ConfigJson(reader), reader.path), threads, arch, deepseek4Layout(reader))
        : new GgufWeightSource(reader, ggufModelConfig(reader), threads, arch);
      src.checkTypes();
      return src;
    } catch (e) {
      await reader.close();
      throw e;
    }
  }

  get description(): string {
    return this.reader.path;
  }

  /** Fails now, not layers into a pass, when a tensor has a type we cannot dequantize. */
  private checkTypes(): void {
    const bad = this.reader.tensors.filter((t) => !t.type.dequantizer && !this.layout?.readsRaw(t));
    if (bad.length) {
      const kinds = [...new Set(bad.map((t) => t.type.name))].join(", ");
      throw new DeepcastError(
        `${bad.length} tensor(s) are ${kinds}, which the forward pass cannot dequantize (supported: ${ggmlDequantTypes().map((t) => t.name).join(", ")})`,
        { file: this.description, tensor: bad[0]!.name });
    }
  }

  /** The HF name's GGUF tensor(s), or null when the model has no such tensor. */
  private resolve(name: string): Resolved | null {
    let r = this.cache.get(name);
    if (r !== undefined) return r;
    if (this.layout) {
      r = this.layout.resolve(name);
      this.cache.set(name, r);
      return r;
    }
    r = null;
    for (const rule of rules(this.arch)) {
      const m = rule.re.exec(name);
      if (!m) continue;
      const bid = m.groups?.bid;
      if (rule.kind === "copy") {
        const t = this.reader.tensor(fill(rule.gguf!, bid));
        if (t) r = { kind: "copy", t, shape: [...t.ne].reverse() };
      } else if (rule.kind === "stack") {
        const t = this.reader.tensor(fill(rule.gguf!, bid));
        const e = Number(m.groups!.xid);
        if (t) {
          // llama-quantize drops trailing 1-dims: one expert is stored [in, out].
          const [ne0, ne1, ne2] = dims3(t);
          if (e < ne2) r = { kind: "expert", t, e, shape: [ne1, ne0] };
        }
      } else {
        const legacy = this.reader.tensor(fill(LEGACY_KV_B, bid));
        const kb = this.reader.tensor(fill(rule.kB!, bid));
        const vb = this.reader.tensor(fill(rule.vB!, bid));
        if (legacy) r = { kind: "copy", t: legacy, shape: [...legacy.ne].reverse() };
        else if (kb && vb) r = this.kvB(kb, vb);
        else if (kb || vb) throw new DeepcastError(`${(kb ?? vb)!.name} has no ${kb ? "attn_v_b" : "attn_k_b"} partner`, { file: this.description, tensor: (kb ?? vb)!.name });
      }
      break;
    }
    this.cache.set(name, r);
    return r;
  }

  private kvB(kb: GgufTensorInfo, vb: GgufTensorInfo): Resolved {
    const [nope, kvr, nHead] = dims3(kb);
    const [kvr2, v, nHead2] = dims3(vb);
    if (kvr !== kvr2 || nHead !== nHead2) {
      throw new DeepcastError(`attn_k_b ne [${kb.ne.join(", ")}] and attn_v_b ne [${vb.ne.join(", ")}] do not fit together ([nope, kv_lora, heads] and [kv_lora, v, heads])`, { file: this.description, tensor: kb.name });
    }
    return { kind: "kv_b", kb, vb, nHead, nope, v, kvr, shape: [nHead * (nope + v), kvr] };
  }

  private where(name: string): Resolved {
    const r = this.resolve(name);
    if (!r) throw new DeepcastError("tensor not found in the GGUF", { file: this.description, tensor: name });
    return r;
  }

  has(name: string): boolean {
    return this.resolve(name) !== null;
  }

  /**
   * The GGUF tensor(s) an HF name is read from (with their ggml types): one tensor, the stacked
   * tensor of a routed expert (and its index), or attn_k_b and attn_v_b for kv_b_proj.
   */
  ggufTensors(name: string): { tensors: GgufTensorInfo[]; expert?: number } {
    const r = this.where(name);
    if (r.kind === "kv_b") return { tensors: [r.kb, r.vb] };
    return r.kind === "expert" ? { tensors: [r.t], expert: r.e } : { tensors: [r.t] };
  }

  shape(name: string): readonly number[] {
    return this.where(name).shape;
  }

  /** The HF names this GGUF provides (routed experts one by one, kv_b_proj for each attn_k_b/attn_v_b pair). */
  hfNames(): string[] {
    if (this.layout) return this.layout.hfNames();
    const out: string[] = [];
    const byGguf = new Map<string, NameRule>();
    for (const rule of rules(this.arch)) {
      if (rule.gguf) byGguf.set(rule.gguf, rule);
      if (rule.kB) byGguf.set(rule.kB, rule);
      if (rule.kind === "kv_b_split") byGguf.set(LEGACY_KV_B, rule);
    }
    const patterns = [...byGguf].map(([g, rule]) => ({ re: compile(g), rule, g }));
    for (const t of this.reader.tensors) {
      for (const { re, rule, g } of patterns) {
        const m = re.exec(t.name);
        if (!m) continue;
        const bid = m.groups?.bid;
        if (rule.kind === "stack") {
          for (let e = 0; e < dims3(t)[2]; e++) out.push(fill(rule.hf, bid).replace("{xid}", String(e)));
        } else if (rule.kind === "kv_b_split") {
          if (g === LEGACY_KV_B || this.reader.tensor(fill(rule.vB!, bid))) out.push(fill(rule.hf, bid));
        } else {
          out.push(fill(rule.hf, bid));
        }
        break;
      }
    }
    return out;
  }

  private range(name: string, r: Resolved, start?: number, count?: number): [number, number] {
    const rows = r.shape[0] ?? 1;
    const r0 = start ?? 0;
    const n = count ?? rows - r0;
    if (!Number.isInteger(r0) || !Number.isInteger(n) || r0 < 0 || n < 0 || r0 + n > rows) {
      throw new DeepcastError(`rows ${r0}..${r0 + n} out of range for shape [${r.shape.join(", ")}]`, { file: this.description, tensor: name });
    }
    return [r0, n];
  }

  async readStored(name: string, start?: number, count?: number): Promise<StoredMatrix | null> {
    const r = this.where(name);
    const [r0, n] = this.range(name, r, start, count);
    if (r.kind === "kv_b" || r.kind === "ids" || r.shape.length !== 2 || (r.kind === "copy" && r.t.ne.length !== 2)) return null;
    const t = r.t;
    const ne0 = t.ne[0]!;
    const rb = rowBytes(t.type.id, ne0);
    const row0 = r.kind === "expert" ? r.e * r.shape[0]! + r0 : r0;
    const data = new Uint8Array(n * rb);
    await this.reader.read(t, row0 * rb, data);
    return { type: t.type.id, data, rows: n, cols: ne0 };
  }

  async read(name: string, start?: number, count?: number): Promise<Float32Array> {
    const r = this.where(name);
    const [r0, n] = this.range(name, r, start, count);
    const rows = r.shape[0] ?? 1;
    switch (r.kind) {
      case "copy": {
        const t = r.t;
        if (t.ne.length === 1) {
          // 1-D (norms, biases): small, read whole.
          const all = await this.rows(t, 0, 1);
          return r0 === 0 && n === rows ? all : all.slice(r0, r0 + n);
        }
        // HF row = one index of the outermost ggml dim = product(ne[1..-2]) ggml rows of ne0.
        const per = t.ne.slice(1, -1).reduce((a, b) => a * b, 1);
        return this.rows(t, r0 * per, n * per);
      }
      case "expert":
        return this.rows(r.t, r.e * r.shape[0]! + r0, n);
      case "ids": {
        const k = r.shape[1]!;
        const ids = new Int32Array(n * k);
        await this.reader.read(r.t, r0 * k * 4, new Uint8Array(ids.buffer));
        return Float32Array.from(ids);
      }
      case "kv_b":
        return this.kvBRows(r, r0, n);
    }
  }

  /** Dequantizes ggml rows [row0, row0+n) (rows of ne0 values) of `t`. */
  private async rows(t: GgufTensorInfo, row0: number, n: number): Promise<Float32Array> {
    const ne0 = t.ne[0]!;
    const rb = rowBytes(t.type.id, ne0);
    const bytes = new Uint8Array(n * rb);
    await this.reader.read(t, row0 * rb, bytes);
    return dequantizeRows(t.type.id, bytes, n, ne0, n * ne0 >= PARALLEL_MIN ? this.threads : 1);
  }

  /** Rows [r0, r0+n) of kv_b_proj [nHead*(nope+v), kvr], from the heads that hold them. */
  private async kvBRows(r: Extract<Resolved, { kind: "kv_b" }>, r0: number, n: number): Promise<Float32Array> {
    const { nope, v, kvr } = r;
    const per = nope + v;
    const out = new Float32Array(n * kvr);
    if (n === 0) return out;
    const h0 = Math.floor(r0 / per);
    const h1 = Math.floor((r0 + n - 1) / per) + 1;
    // k_b: per head kvr ggml rows of nope values; v_b: per head v ggml rows of kvr values.
    const [kb, vb] = await Promise.all([this.rows(r.kb, h0 * kvr, (h1 - h0) * kvr), this.rows(r.vb, h0 * v, (h1 - h0) * v)]);
    for (let row = r0; row < r0 + n; row++) {
      const h = Math.floor(row / per) - h0;
      const d = row % per;
      const o = (row - r0) * kvr;
      if (d < nope) {
        const base = h * kvr * nope + d;
        for (let c = 0; c < kvr; c++) out[o + c] = kb[base + c * nope]!;
      } else {
        const from = (h * v + (d - nope)) * kvr;
        out.set(vb.subarray(from, from + kvr), o);
      }
    }
    return out;
  }

  close(): Promise<void> {
    return this.reader.close();
  }
}

/**
 * The model's hyper-parameters from `deepseek2.*` metadata, as the HF config.json keys
 * convert_hf_to_gguf.py wrote them from, through parseModelConfig:
 * head_count_kv is not used (1 under MLA); qk_nope = key_length_mla - rope.dimension_count and
 * v_head = value_length_mla (legacy files without the *_mla keys: key_length / value_length);
 * expert_weights_scale = routed_scaling_factor; expert_gating_func 1 softmax / 2 sigmoid (absent:
 * softmax, as llama.cpp assumes); leading_dense_block_count = first_k_dense_replace (absent: 0 with
 * experts); yarn_log_multiplier = 0.1 * mscale_all_dim; the vocabulary is token_embd's row count.
 */
export function ggufModelConfig(reader: GgufTensorStore): ModelConfig {
  const file = reader.path;
  const bad = (msg: string) => new DeepcastError(msg, { file });
  const arch = reader.value(Keys.General.ARCHITECTURE);
  if (typeof arch !== "string" || !(arch in FORMATS)) {
    throw new DeepcastError(`GGUF architecture is ${JSON.stringify(arch)}, expected "deepseek2" (DeepSeek-V2/V3) or "deepseek32" (DeepSeek-V3.2)`, { file, code: "UNSUPPORTED" });
  }
  const ARCH = arch;
  const get = (key: string): number | undefined => {
    const v = reader.value(archKey(key, ARCH));
    if (v === undefined) return undefined;
    if (typeof v === "bigint") return Number(v);
    if (typeof v !== "number") throw bad(`GGUF metadata ${archKey(key, ARCH)} is ${JSON.stringify(v)}, expected a number`);
    return v;
  };
  const need = (key: string): number => {
    const v = get(key);
    if (v === undefined) throw bad(`GGUF metadata has no ${archKey(key, ARCH)}`);
    return v;
  };
  const getF = (key: string) => {
    const v = get(key);
    return v === undefined ? undefined : f32Decimal(v);
  };
  const embd = reader.tensor("token_embd.weight");
  if (!embd || embd.ne.length !== 2) throw bad("GGUF has no 2-D token_embd.weight");
  const rope = need(Keys.Rope.DIMENSION_COUNT);
  const keyMla = get(Keys.Attention.KEY_LENGTH_MLA);
  const valueMla = get(Keys.Attention.VALUE_LENGTH_MLA);
  const nope = keyMla !== undefined ? keyMla - rope : need(Keys.Attention.KEY_LENGTH) - rope;
  const vHead = valueMla ?? need(Keys.Attention.VALUE_LENGTH);
  const nExpert = get(Keys.LLM.EXPERT_COUNT) ?? 0;
  const gating = get(Keys.LLM.EXPERT_GATING_FUNC);
  const scoring = gating === undefined || gating === 1 ? "softmax" : gating === 2 ? "sigmoid" : undefined;
  if (scoring === undefined) throw bad(`${archKey(Keys.LLM.EXPERT_GATING_FUNC, ARCH)} ${gating} is not supported (1 softmax, 2 sigmoid)`);
  const normKv = reader.value(archKey(Keys.LLM.EXPERT_WEIGHTS_NORM, ARCH));
  // deepseek32 keeps the MTP blocks: block_count counts them, nextn_predict_layers says how many
  const nextn = get(Keys.LLM.NEXTN_PREDICT_LAYERS) ?? 0;
  const nLayers = ARCH === "deepseek32" ? need(Keys.LLM.BLOCK_COUNT) - nextn : need(Keys.LLM.BLOCK_COUNT);
  if (nLayers < 0) throw bad(`${archKey(Keys.LLM.NEXTN_PREDICT_LAYERS, ARCH)} ${nextn} is more than ${archKey(Keys.LLM.BLOCK_COUNT, ARCH)} ${need(Keys.LLM.BLOCK_COUNT)}`);
  const raw: Record<string, unknown> = {
    model_type: ARCH === "deepseek32" ? "deepseek_v32" : "deepseek_v3",
    vocab_size: embd.ne[1],
    hidden_size: need(Keys.LLM.EMBEDDING_LENGTH),
    intermediate_size: need(Keys.LLM.FEED_FORWARD_LENGTH),
    moe_intermediate_size: get(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH) ?? need(Keys.LLM.FEED_FORWARD_LENGTH),
    num_hidden_layers: nLayers,
    first_k_dense_replace: get(Keys.LLM.LEADING_DENSE_BLOCK_COUNT) ?? (nExpert > 0 ? 0 : nLayers),
    num_attention_heads: need(Keys.Attention.HEAD_COUNT),
    n_routed_experts: nExpert,
    n_shared_experts: get(Keys.LLM.EXPERT_SHARED_COUNT) ?? 0,
    num_experts_per_tok: get(Keys.LLM.EXPERT_USED_COUNT) ?? 0,
    n_group: get(Keys.LLM.EXPERT_GROUP_COUNT) ?? 1,
    topk_group: get(Keys.LLM.EXPERT_GROUP_USED_COUNT) ?? 1,
    scoring_func: scoring,
    // not stored; the selection bias tensors are what noaux_tc adds
    topk_method: reader.tensors.some((t) => t.name.endsWith(".exp_probs_b.bias")) ? "noaux_tc" : "greedy",
    norm_topk_prob: normKv === true,
    routed_scaling_factor: getF(Keys.LLM.EXPERT_WEIGHTS_SCALE) ?? 1,
    q_lora_rank: get(Keys.Attention.Q_LORA_RANK) ?? 0,
    kv_lora_rank: need(Keys.Attention.KV_LORA_RANK),
    qk_nope_head_dim: nope,
    qk_rope_head_dim: rope,
    v_head_dim: vHead,
    rope_theta: getF(Keys.Rope.FREQ_BASE) ?? 10000,
    rms_norm_eps: getF(Keys.Attention.LAYERNORM_RMS_EPS) ?? 1e-6,
    max_position_embeddings: need(Keys.LLM.CONTEXT_LENGTH),
    num_nextn_predict_layers: nextn,
    tie_word_embeddings: reader.tensor("output.weight") === undefined,
  };
  if (ARCH === "deepseek32") {
    raw.index_n_heads = need(Keys.Indexer.HEAD_COUNT);
    raw.index_head_dim = need(Keys.Indexer.KEY_LENGTH);
    raw.index_topk = need(Keys.Indexer.TOP_K);
  }
  const bos = reader.value(Keys.Tokenizer.BOS_ID);
  const eos = reader.value(Keys.Tokenizer.EOS_ID);
  if (typeof bos === "number") raw.bos_token_id = bos;
  if (typeof eos === "number") raw.eos_token_id = eos;
  const scaling = reader.value(archKey(Keys.Rope.SCALING_TYPE, ARCH));
  if (scaling !== undefined && scaling !== "none") {
    if (scaling !== "yarn") throw bad(`${archKey(Keys.Rope.SCALING_TYPE, ARCH)} ${JSON.stringify(scaling)} is not supported (DeepSeek-V3 uses yarn)`);
    const logMul = getF(Keys.Rope.SCALING_YARN_LOG_MUL);
    // llama.cpp divides it by 0.1 again on load; 12 digits drop the binary noise of the division.
    const mscaleAllDim = logMul === undefined ? 0 : Number((logMul / 0.1).toPrecision(12));
    const rs: Record<string, unknown> = {
      type: "yarn",
      factor: getF(Keys.Rope.SCALING_FACTOR) ?? 1,
      original_max_position_embeddings: need(Keys.Rope.SCALING_ORIG_CTX_LEN),
      mscale: mscaleAllDim,
      mscale_all_dim: mscaleAllDim,
    };
    const bf = getF(Keys.Rope.SCALING_YARN_BETA_FAST);
    const bs = getF(Keys.Rope.SCALING_YARN_BETA_SLOW);
    if (bf !== undefined) rs.beta_fast = bf;
    if (bs !== undefined) rs.beta_slow = bs;
    raw.rope_scaling = rs;
  }
  return parseGgufConfig(parseModelConfig, raw, file);
}

/** A config.json rebuilt from GGUF metadata, parsed; its errors name the GGUF. */
function parseGgufConfig(parse: (raw: unknown) => ModelConfig, raw: Record<string, unknown>, file: string): ModelConfig {
  try {
    return parse(raw);
  } catch (e) {
    if (e instanceof DeepcastError) throw new DeepcastError(`GGUF metadata: ${e.message.replace(/^config\.json: /, "").replace(/ \(file config\.json\)$/, "")}`, { file, code: e.code });
    throw e;
  }
}
