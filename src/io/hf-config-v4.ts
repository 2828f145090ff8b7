/**
 * DeepSeek-V4's config.json against its tensors (names without `model.`, spec §1.3): every dimension
 * the config gives must agree with the tensors that carry it, the per-layer compress ratios with the
 * compressor and indexer tensors, num_hash_layers with the `tid2eid` tables. Errors are CONFIG_MISMATCH
 * naming the file, key and tensor. The V3 check (./hf-config.ts) dispatches here. parseV4Config reads
 * the hyper-parameters the forward pass (src/model/forward-v4.ts) needs into a ModelConfig with its V4 part.
 */
import { DeepcastError } from "../errors.js";
import type { Dtype } from "./dtypes.js";
import { int, num, parseRopeScaling, type ModelConfig } from "./hf-config.js";

/** DeepSeek-V4's hyper-parameters beyond V3's (model.py ModelArgs; config.json key in each comment). */
export interface V4Params {
  /** head_dim: width of every query head and of the single KV head (K = V). */
  headDim: number;
  /** o_groups / o_lora_rank: the grouped output LoRA (wo_a per group, then wo_b). */
  oGroups: number;
  oLoraRank: number;
  /** sliding_window: keys max(0, t-window+1)..t of the current tokens. */
  slidingWindow: number;
  /** compress_ratios, verbatim (one per layer, then the MTP tail): 0, 4 (with the indexer) or 128. */
  compressRatios: number[];
  /** compress_rope_theta: RoPE base of the compressed-attention layers (with YaRN). */
  compressRopeTheta: number;
  /** index_n_heads / index_head_dim / index_topk: the ratio-4 layers' indexer. */
  indexHeads: number;
  indexHeadDim: number;
  indexTopk: number;
  /** num_hash_layers: layers 0..n-1 route by tid2eid[token]. */
  hashLayers: number;
  /** swiglu_limit: clamp of the experts' gate (above) and up (both sides) projections; 0 = none. */
  swigluLimit: number;
  /** hc_mult / hc_sinkhorn_iters / hc_eps: the hyper-connections. */
  hcMult: number;
  hcSinkhornIters: number;
  hcEps: number;
}

/**
 * A DeepSeek-V4 config.json as a ModelConfig: V3's fields where the concept is shared (dimensions,
 * experts, routing, rope_theta with YaRN, norms), MLA's fields as their single-head equivalents
 * (kv_lora_rank = v_head_dim = head_dim, qk_nope_head_dim = head_dim - qk_rope_head_dim), no dense
 * layers, and everything else in `v4`. Errors are CONFIG_MISMATCH (UNSUPPORTED for a scoring
 * function or activation model.py does not have), naming the file and key.
 */
export function parseV4Config(raw: unknown, file = "config.json"): ModelConfig {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new DeepcastError("config.json is not a JSON object", { file, code: "CONFIG_MISMATCH" });
  }
  const cfg = raw as Record<string, unknown>;
  const bad = (msg: string) => new DeepcastError(`config.json: ${msg}`, { file, code: "CONFIG_MISMATCH" });
  const pos = (key: string, fallback?: number) => {
    const v = int(cfg, key, fallback, file);
    if (v === 0) throw bad(`${key} must be positive, got 0`);
    return v;
  };
  const scoreFunc = cfg.scoring_func ?? "sqrtsoftplus";
  if (scoreFunc !== "sqrtsoftplus" && scoreFunc !== "sigmoid" && scoreFunc !== "softmax") {
    throw new DeepcastError(`config.json: unsupported scoring_func ${JSON.stringify(scoreFunc)}`, { file, code: "UNSUPPORTED" });
  }
  const hiddenAct = cfg.hidden_act ?? "silu";
  if (hiddenAct !== "silu") throw new DeepcastError(`config.json: unsupported hidden_act ${JSON.stringify(hiddenAct)}`, { file, code: "UNSUPPORTED" });
  const nLayers = pos("num_hidden_layers");
  const nMtp = int(cfg, "num_nextn_predict_layers", 0, file);
  const ratios = cfg.compress_ratios;
  if (!Array.isArray(ratios) || !ratios.every((x) => typeof x === "number" && V4_COMPRESS_RATIOS.includes(x))) {
    throw bad(`compress_ratios must be a list of ${V4_COMPRESS_RATIOS.join(", ")}, got ${JSON.stringify(ratios)}`);
  }
  if (ratios.length < nLayers) throw bad(`compress_ratios has ${ratios.length} entries, fewer than num_hidden_layers ${nLayers}`);
  const headDim = pos("head_dim");
  const rope = pos("qk_rope_head_dim");
  if (rope % 2 !== 0 || rope > headDim) throw bad(`qk_rope_head_dim ${rope} must be even and at most head_dim ${headDim}`);
  const nHeads = pos("num_attention_heads");
  const kvHeads = int(cfg, "num_key_value_heads", 1, file);
  if (kvHeads !== 1) throw bad(`num_key_value_heads must be 1 for DeepSeek-V4 (one KV head, K = V), got ${kvHeads}`);
  const oGroups = pos("o_groups");
  if (nHeads % oGroups !== 0) throw bad(`o_groups ${oGroups} does not divide num_attention_heads ${nHeads}`);
  const nRouted = pos("n_routed_experts");
  const perTok = pos("num_experts_per_tok");
  if (perTok > nRouted) throw bad(`num_experts_per_tok ${perTok} is not between 1 and n_routed_experts ${nRouted}`);
  const moeInter = pos("moe_intermediate_size");
  const hcMult = pos("hc_mult");
  const v4: V4Params = {
    headDim,
    oGroups,
    oLoraRank: pos("o_lora_rank"),
    slidingWindow: pos("sliding_window"),
    compressRatios: [...(ratios as number[])],
    compressRopeTheta: num(cfg, "compress_rope_theta", ratios.some((r) => r !== 0) ? undefined : 10000, file),
    indexHeads: ratios.includes(4) ? pos("index_n_heads") : int(cfg, "index_n_heads", 0, file),
    indexHeadDim: ratios.includes(4) ? pos("index_head_dim") : int(cfg, "index_head_dim", 0, file),
    indexTopk: ratios.includes(4) ? pos("index_topk") : int(cfg, "index_topk", 0, file),
    hashLayers: int(cfg, "num_hash_layers", 0, file),
    swigluLimit: num(cfg, "swiglu_limit", 0, file),
    hcMult,
    hcSinkhornIters: pos("hc_sinkhorn_iters", 20),
    hcEps: num(cfg, "hc_eps", 1e-6, file),
  };
  if (v4.indexHeadDim > 0 && v4.indexHeadDim < rope) throw bad(`index_head_dim ${v4.indexHeadDim} is smaller than qk_rope_head_dim ${rope}`);
  if (v4.hashLayers > nLayers) throw bad(`num_hash_layers ${v4.hashLayers} exceeds num_hidden_layers ${nLayers}`);
  return {
    vocabSize: pos("vocab_size"),
    dim: pos("hidden_size"),
    interDim: moeInter,
    moeInterDim: moeInter,
    nLayers,
    nDenseLayers: 0,
    moeLayerFreq: 1,
    nHeads,
    nRoutedExperts: nRouted,
    nSharedExperts: int(cfg, "n_shared_experts", 1, file),
    nActivatedExperts: perTok,
    nExpertGroups: 1,
    nLimitedGroups: 1,
    scoreFunc,
    topkMethod: String(cfg.topk_method ?? "noaux_tc"),
    normTopkProb: Boolean(cfg.norm_topk_prob ?? true),
    routeScale: num(cfg, "routed_scaling_factor", 1, file),
    qLoraRank: pos("q_lora_rank"),
    kvLoraRank: headDim,
    qkNopeHeadDim: headDim - rope,
    qkRopeHeadDim: rope,
    vHeadDim: headDim,
    ropeTheta: num(cfg, "rope_theta", 10000, file),
    ropeScaling: parseRopeScaling(cfg, file),
    rmsNormEps: num(cfg, "rms_norm_eps", 1e-6, file),
    maxPositionEmbeddings: pos("max_position_embeddings"),
    bosTokenId: int(cfg, "bos_token_id", 0, file),
    eosTokenId: int(cfg, "eos_token_id", 1, file),
    nMtpLayers: nMtp,
    tieWordEmbeddings: Boolean(cfg.tie_word_embeddings ?? false),
    v4,
  };
}

export interface V4Tensors {
  names(): Iterable<string>;
  shape(name: string): readonly number[] | undefined;
  dtype(name: string): Dtype | undefined;
}

/** The compress ratios llama.cpp and DeepSeek's model.py implement. */
export const V4_COMPRESS_RATIOS: readonly number[] = [0, 4, 128];

export function checkV4Config(raw: unknown, tensors: V4Tensors, file: string): void {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new DeepcastError("config.json is not a JSON object", { file, code: "CONFIG_MISMATCH" });
  }
  const cfg = raw as Record<string, unknown>;
  const bad = (msg: string, tensor?: string) => new DeepcastError(`config.json: ${msg}`, { file, tensor, code: "CONFIG_MISMATCH" });
  const dim = (key: string): number | undefined => {
    const v = cfg[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw bad(`${key} must be a non-negative integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const v = {
    vocab: dim("vocab_size"), hidden: dim("hidden_size"), layers: dim("num_hidden_layers"), mtp: dim("num_nextn_predict_layers") ?? 0,
    heads: dim("num_attention_heads"), kvHeads: dim("num_key_value_heads"), headDim: dim("head_dim"), rope: dim("qk_rope_head_dim"),
    qLora: dim("q_lora_rank"), oLora: dim("o_lora_rank"), oGroups: dim("o_groups"),
    experts: dim("n_routed_experts"), shared: dim("n_shared_experts"), perTok: dim("num_experts_per_tok"), moeInter: dim("moe_intermediate_size"),
    hashLayers: dim("num_hash_layers") ?? 0, hc: dim("hc_mult"),
    indexHeads: dim("index_n_heads"), indexHeadDim: dim("index_head_dim"),
  };
  if (v.kvHeads !== undefined && v.kvHeads !== 1) throw bad(`num_key_value_heads must be 1 for DeepSeek-V4 (one KV head, K = V), got ${v.kvHeads}`);
  if (v.oGroups !== undefined && v.heads !== undefined && (v.oGroups === 0 || v.heads % v.oGroups !== 0)) throw bad(`o_groups ${v.oGroups} does not divide num_attention_heads ${v.heads}`);
  if (v.perTok !== undefined && v.experts !== undefined && (v.perTok < 1 || v.perTok > v.experts)) throw bad(`num_experts_per_tok ${v.perTok} is not between 1 and n_routed_experts ${v.experts}`);
  if (v.rope !== undefined && v.headDim !== undefined && v.rope > v.headDim) throw bad(`qk_rope_head_dim ${v.rope} exceeds head_dim ${v.headDim}`);

  let ratios: number[] | undefined;
  if (cfg.compress_ratios !== undefined) {
    const r = cfg.compress_ratios;
    if (!Array.isArray(r) || !r.every((x) => typeof x === "number" && V4_COMPRESS_RATIOS.includes(x))) {
      throw bad(`compress_ratios must be a list of ${V4_COMPRESS_RATIOS.join(", ")}, got ${JSON.stringify(r)}`);
    }
    ratios = r as number[];
    if (v.layers !== undefined && ratios.length < v.layers + v.mtp) {
      throw bad(`compress_ratios has ${ratios.length} entries, fewer than num_hidden_layers ${v.layers} + num_nextn_predict_layers ${v.mtp}`);
    }
  }

  const expect = (name: string, dims: [number | undefined, string][]) => {
    const s = tensors.shape(name);
    if (!s) return;
    if (s.length !== dims.length) throw bad(`tensor ${name} has shape ${JSON.stringify(s)}, expected ${dims.length} dimension(s) (${dims.map((d) => d[1]).join(", ")})`, name);
    for (const [i, [want, keys]] of dims.entries()) {
      if (want !== undefined && s[i] !== want) throw bad(`${keys} = ${want}, but tensor ${name} has ${s[i]} in dimension ${i} (shape ${JSON.stringify(s)})`, name);
    }
  };
  const mul = (...xs: (number | undefined)[]) => (xs.every((x) => x !== undefined) ? xs.reduce((a, b) => a! * b!, 1) : undefined);
  const div = (a: number | undefined, b: number | undefined) => (a !== undefined && b ? a / b : undefined);
  const mix = v.hc !== undefined ? (2 + v.hc) * v.hc : undefined;
  const hcDim = mul(v.hc, v.hidden);

  expect("embed.weight", [[v.vocab, "vocab_size"], [v.hidden, "hidden_size"]]);
  expect("head.weight", [[v.vocab, "vocab_size"], [v.hidden, "hidden_size"]]);
  expect("norm.weight", [[v.hidden, "hidden_size"]]);

  const names = [...tensors.names()];
  const blocks = new Map<string, number>();
  const experts = new Map<string, number>();
  for (const n of names) {
    const m = /^(layers\.(\d+)\.|mtp\.(\d+)\.)/.exec(n);
    if (!m) continue;
    const index = m[2] !== undefined ? Number(m[2]) : (v.layers ?? 0) + Number(m[3]);
    if (m[2] !== undefined && v.layers !== undefined && index >= v.layers) throw bad(`num_hidden_layers = ${v.layers}, but the checkpoint has ${m[1]}`, n);
    if (m[3] !== undefined && Number(m[3]) >= v.mtp) throw bad(`num_nextn_predict_layers = ${v.mtp}, but the checkpoint has ${m[1]}`, n);
    blocks.set(m[1]!, index);
    const e = /\.ffn\.experts\.(\d+)\./.exec(n);
    if (e) experts.set(m[1]!, Math.max(experts.get(m[1]!) ?? 0, Number(e[1]) + 1));
  }
  if (v.layers !== undefined && blocks.size > 0) {
    for (let l = 0; l < v.layers; l++) if (!blocks.has(`layers.${l}.`)) throw bad(`num_hidden_layers = ${v.layers}, but the checkpoint has no tensors of layer ${l}`, `layers.${l}`);
  }

  const hcHead = (p: string) => {
    expect(`${p}hc_head_fn`, [[v.hc, "hc_mult"], [hcDim, "hc_mult * hidden_size"]]);
    expect(`${p}hc_head_base`, [[v.hc, "hc_mult"]]);
    expect(`${p}hc_head_scale`, [[1, "1"]]);
  };
  hcHead("");
  const compressor = (p: string, ratio: number, headDim: number | undefined, what: string) => {
    const coff = ratio === 4 ? 2 : 1;
    for (const w of ["wkv", "wgate"]) expect(`${p}${w}.weight`, [[mul(coff, headDim), `${coff} * ${what}`], [v.hidden, "hidden_size"]]);
    expect(`${p}ape`, [[ratio, "compress_ratios[layer]"], [mul(coff, headDim), `${coff} * ${what}`]]);
    expect(`${p}norm.weight`, [[headDim, what]]);
  };
  for (const [p, index] of blocks) {
    const a = `${p}attn.`;
    for (const k of ["attn", "ffn"]) {
      expect(`${p}hc_${k}_fn`, [[mix, "(2 + hc_mult) * hc_mult"], [hcDim, "hc_mult * hidden_size"]]);
      expect(`${p}hc_${k}_base`, [[mix, "(2 + hc_mult) * hc_mult"]]);
      expect(`${p}hc_${k}_scale`, [[3, "3"]]);
    }
    expect(`${p}attn_norm.weight`, [[v.hidden, "hidden_size"]]);
    expect(`${p}ffn_norm.weight`, [[v.hidden, "hidden_size"]]);
    expect(`${a}attn_sink`, [[v.heads, "num_attention_heads"]]);
    expect(`${a}wq_a.weight`, [[v.qLora, "q_lora_rank"], [v.hidden, "hidden_size"]]);
    expect(`${a}q_norm.weight`, [[v.qLora, "q_lora_rank"]]);
    expect(`${a}wq_b.weight`, [[mul(v.heads, v.headDim), "num_attention_heads * head_dim"], [v.qLora, "q_lora_rank"]]);
    expect(`${a}wkv.weight`, [[v.headDim, "head_dim"], [v.hidden, "hidden_size"]]);
    expect(`${a}kv_norm.weight`, [[v.headDim, "head_dim"]]);
    expect(`${a}wo_a.weight`, [[mul(v.oGroups, v.oLora), "o_groups * o_lora_rank"], [div(mul(v.heads, v.headDim), v.oGroups), "num_attention_heads * head_dim / o_groups"]]);
    expect(`${a}wo_b.weight`, [[v.hidden, "hidden_size"], [mul(v.oGroups, v.oLora), "o_groups * o_lora_rank"]]);
    const ratio = ratios?.[index];
    if (ratio !== undefined) {
      const has = (n: string) => tensors.shape(n) !== undefined;
      if (has(`${a}compressor.ape`) !== (ratio !== 0)) {
        throw bad(`compress_ratios[${index}] = ${ratio}, but ${p.slice(0, -1)} ${ratio === 0 ? "has" : "has no"} attention compressor`, `${a}compressor.ape`);
      }
      if (has(`${a}indexer.wq_b.weight`) !== (ratio === 4)) {
        throw bad(`compress_ratios[${index}] = ${ratio}, but ${p.slice(0, -1)} ${ratio === 4 ? "has no" : "has an"} indexer (only ratio-4 layers have one)`, `${a}indexer.wq_b.weight`);
      }
      if (ratio !== 0) compressor(`${a}compressor.`, ratio, v.headDim, "head_dim");
      if (ratio === 4) {
        expect(`${a}indexer.wq_b.weight`, [[mul(v.indexHeads, v.indexHeadDim), "index_n_heads * index_head_dim"], [v.qLora, "q_lora_rank"]]);
        expect(`${a}indexer.weights_proj.weight`, [[v.indexHeads, "index_n_heads"], [v.hidden, "hidden_size"]]);
        compressor(`${a}indexer.compressor.`, 4, v.indexHeadDim, "index_head_dim");
      }
    }
    const f = `${p}ffn.`;
    expect(`${f}gate.weight`, [[v.experts, "n_routed_experts"], [v.hidden, "hidden_size"]]);
    expect(`${f}gate.bias`, [[v.experts, "n_routed_experts"]]);
    const hash = p.startsWith("layers.") && index < v.hashLayers;
    const tid = `${f}gate.tid2eid`;
    if (tensors.shape(tid) !== undefined || hash) {
      if (!hash) throw bad(`num_hash_layers = ${v.hashLayers}, but ${p.slice(0, -1)} has a hash-routing table`, tid);
      if (tensors.shape(tid) === undefined && tensors.shape(`${f}gate.weight`) !== undefined) throw bad(`num_hash_layers = ${v.hashLayers}, but hash layer ${p.slice(0, -1)} has no ${tid}`, tid);
      const dt = tensors.dtype(tid);
      if (dt !== undefined && dt !== "I64" && dt !== "I32") throw new DeepcastError(`hash-routing table must be I64 (or I32), found ${dt}`, { file, tensor: tid, code: "UNSUPPORTED" });
      expect(tid, [[v.vocab, "vocab_size"], [v.perTok, "num_experts_per_tok"]]);
    }
    const nExp = experts.get(p);
    if (nExp !== undefined && v.experts !== undefined && nExp > v.experts) throw bad(`n_routed_experts = ${v.experts}, but the checkpoint has expert ${nExp - 1} in ${p.slice(0, -1)}`, `${f}experts.${nExp - 1}`);
    for (const e of nExp !== undefined ? [0, nExp - 1] : []) {
      const x = `${f}experts.${e}.`;
      // Packed FP4 (I8) stores two input columns per byte; Base checkpoints' FP8 experts one.
      const per = (w: string) => (tensors.dtype(`${x}${w}.weight`) === "I8" ? 2 : 1);
      const packedNote = (w: string) => (per(w) === 2 ? " / 2 (two FP4 codes per byte)" : "");
      expect(`${x}w1.weight`, [[v.moeInter, "moe_intermediate_size"], [div(v.hidden, per("w1")), `hidden_size${packedNote("w1")}`]]);
      expect(`${x}w3.weight`, [[v.moeInter, "moe_intermediate_size"], [div(v.hidden, per("w3")), `hidden_size${packedNote("w3")}`]]);
      expect(`${x}w2.weight`, [[v.hidden, "hidden_size"], [div(v.moeInter, per("w2")), `moe_intermediate_size${packedNote("w2")}`]]);
    }
    const si = mul(v.moeInter, v.shared);
    expect(`${f}shared_experts.w1.weight`, [[si, "moe_intermediate_size * n_shared_experts"], [v.hidden, "hidden_size"]]);
    expect(`${f}shared_experts.w3.weight`, [[si, "moe_intermediate_size * n_shared_experts"], [v.hidden, "hidden_size"]]);
    expect(`${f}shared_experts.w2.weight`, [[v.hidden, "hidden_size"], [si, "moe_intermediate_size * n_shared_experts"]]);
    if (p.startsWith("mtp.")) {
      for (const w of ["e_proj", "h_proj"]) expect(`${p}${w}.weight`, [[v.hidden, "hidden_size"], [v.hidden, "hidden_size"]]);
      for (const w of ["enorm", "hnorm", "norm"]) expect(`${p}${w}.weight`, [[v.hidden, "hidden_size"]]);
      hcHead(p);
    }
  }
}
