/**
 * Per-tensor output type of `llama-quantize` (llama.cpp v0.4.0) for a given ftype: which tensors are
 * quantized at all, the mixture rules, --tensor-type / --output-tensor-type / --token-embedding-type,
 * and the shape fallbacks. The rules live in formats/quant-mixes.json; this module interprets them.
 *
 * The input is the tensor list of the file llama-quantize would read, i.e. llama.cpp's own F16/BF16/F32
 * conversion (where 1-D tensors, norms, the MoE router and non-".weight" tensors are F32). Tensors that
 * are not quantizable keep that input type. Decisions depend on processing order (running counters),
 * so tensors are processed — and returned — in llama-quantize's order (see `compareQuantizeOrder`).
 */
import { DeepcastError } from "../errors.js";
import { ggmlNDims, ggmlType, type GgmlType, type GgmlTypeRef } from "../formats/ggml-types.js";
import { readFormat } from "../formats/load.js";
import { listNames } from "../units.js";

// ---------------------------------------------------------------------------------------------
// formats/quant-mixes.json
// ---------------------------------------------------------------------------------------------

interface RuleWhen {
  nExpert?: number;
  nExpertNot?: number;
  gqaAtLeast?: number;
  useMoreBits?: boolean;
  layerBelowFraction?: number;
  indexBelow?: number;
  imatrix?: boolean;
  ne0NotMultipleOfBlock?: boolean;
  currentNot?: string;
  nExpertAtLeast?: number;
  layerMiddle?: boolean;
  counterBelowFraction?: number;
}

interface Rule {
  when?: RuleWhen;
  type: string;
}

type RuleSet = Partial<Record<string, Rule[]>>;

interface MixesJson {
  ftypes: { name: string; id: number; default: string; aliases?: string[]; requiresImatrix?: string[]; ownRulesOnly?: boolean }[];
  imatrixRequired: { exemptNames: string[] };
  quantizable: { minDims: number; nameEndsWith: string; excludeContains: string[]; excludeExact: string[]; leaveOutputTensor: string };
  categories: { exact: Record<string, string>; contains: [string, string][]; attnVLike: string[] };
  fallback: { last: string };
  rules: Record<string, RuleSet>;
}


/** The parsed formats/quant-mixes.json (found next to src/ and dist/ alike). */
export function quantMixes(): MixesJson {
  return readFormat<MixesJson>("quant-mixes.json");
}

// ---------------------------------------------------------------------------------------------
// ftypes
// ---------------------------------------------------------------------------------------------

export interface FtypeInfo {
  /** Canonical name, e.g. "Q4_K_M". */
  name: string;
  /** llama_ftype id, the value of general.file_type. */
  id: number;
  defaultType: GgmlType;
  /** Target types that need an imatrix in this ftype (Q2_K in Q2_K_S), except token_embd/output. */
  requiresImatrix: GgmlType[];
  /** The IQ1/IQ2 group: its own rules replace the common ones (output and token_embd aside). */
  ownRulesOnly: boolean;
}

/** All supported ftypes, canonical names. */
export function ftypeNames(): string[] {
  return quantMixes().ftypes.map((f) => f.name);
}

/** Resolves an ftype by name (case-insensitive, aliases Q3_K/Q4_K/Q5_K included) or llama_ftype id. */
export function parseFtype(ftype: string | number): FtypeInfo {
  const m = quantMixes();
  const key = typeof ftype === "number" ? null : ftype.trim().toUpperCase();
  const f = m.ftypes.find((x) =>
    typeof ftype === "number" || /^\d+$/.test(key!) ? x.id === Number(ftype) : x.name === key || (x.aliases ?? []).includes(key!));
  if (!f) {
    throw new DeepcastError(`unsupported output type ${JSON.stringify(ftype)}; supported: ${m.ftypes.map((x) => x.name).join(", ")}`);
  }
  return {
    name: f.name,
    id: f.id,
    defaultType: ggmlType(f.default),
    requiresImatrix: (f.requiresImatrix ?? []).map((t) => ggmlType(t)),
    ownRulesOnly: f.ownRulesOnly ?? false,
  };
}

// ---------------------------------------------------------------------------------------------
// tensor order, eligibility, category
// ---------------------------------------------------------------------------------------------

/** The layer of `sscanf(name, "blk.%d.")`, or -1. */
export function blkLayer(name: string): number {
  const m = /^blk\.([+-]?\d+)/.exec(name);
  return m ? Number(m[1]) : -1;
}

/** llama-model-loader's weight_name_comparer: layer parsed from "blk.N." (-1 otherwise), then byte-wise name. */
export function compareQuantizeOrder(a: string, b: string): number {
  const la = blkLayer(a);
  const lb = blkLayer(b);
  if (la !== lb) return la < lb ? -1 : 1;
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

/** tensor_allows_quantization (without --only-copy). */
export function tensorAllowsQuantization(name: string, ne: readonly number[], leaveOutputTensor = false): boolean {
  const q = quantMixes().quantizable;
  if (ggmlNDims(ne) < q.minDims) return false;
  if (!name.endsWith(q.nameEndsWith)) return false;
  if (q.excludeContains.some((s) => name.includes(s))) return false;
  if (q.excludeExact.includes(name)) return false;
  if (leaveOutputTensor && name === q.leaveOutputTensor) return false;
  return true;
}

/** tensor_get_category. */
export function tensorCategory(name: string): string {
  const c = quantMixes().categories;
  const exact = c.exact[name];
  if (exact) return exact;
  for (const [sub, cat] of c.contains) if (name.includes(sub)) return cat;
  return "other";
}

// ---------------------------------------------------------------------------------------------
// the plan
// ---------------------------------------------------------------------------------------------

export interface MixTensorIn {
  name: string;
  /** ggml order (innermost first). */
  ne: readonly number[];
  /** Type in the input file (llama.cpp's BF16/F16/F32 conversion). */
  type: GgmlTypeRef;
}

export interface MixTensorOut {
  name: string;
  /** ne with trailing 1-dims dropped (ggml_n_dims), as llama-quantize writes them. */
  ne: number[];
  inputType: GgmlType;
  type: GgmlType;
  /** tensor_allows_quantization: false -> type === inputType, bytes copied. */
  quantizable: boolean;
  /** Set when the shape fallback replaced this type. */
  fallbackFrom?: GgmlType;
  /** A --tensor-type pattern chose the type. */
  manual?: boolean;
  /** Needs an imatrix entry (Q2_K tensors in a Q2_K_S file). */
  requiresImatrix: boolean;
}

export interface TensorTypeOverride {
  /** Regular expression (lower-cased, as llama-quantize does), matched anywhere in the tensor name. */
  pattern: string;
  type: GgmlType;
}

/** Parses `--tensor-type NAME=TYPE` like llama-quantize: pattern lower-cased, type a ggml type name. */
export function parseTensorTypeOverride(s: string): TensorTypeOverride {
  const eq = s.indexOf("=");
  if (eq < 0) throw new DeepcastError(`malformed --tensor-type ${JSON.stringify(s)}: expected REGEX=TYPE`);
  if (eq === 0) throw new DeepcastError(`malformed --tensor-type ${JSON.stringify(s)}: missing tensor name`);
  if (eq === s.length - 1) throw new DeepcastError(`malformed --tensor-type ${JSON.stringify(s)}: missing type`);
  const pattern = s.slice(0, eq).toLowerCase();
  try {
    new RegExp(pattern);
  } catch (e) {
    throw new DeepcastError(`malformed --tensor-type ${JSON.stringify(s)}: ${(e as Error).message}`);
  }
  return { pattern, type: ggmlType(s.slice(eq + 1)) };
}

export interface MixOptions {
  /** ftype name (case-insensitive) or llama_ftype id. */
  ftype: string | number;
  /** hparams.n_layer_all = <arch>.block_count. */
  nLayer: number;
  /** hparams.n_expert = <arch>.expert_count (0 when absent). */
  nExpert: number;
  /** <arch>.attention.head_count and head_count_kv (for n_gqa; deepseek2 GGUFs store head_count_kv = 1). */
  nHead?: number;
  nHeadKv?: number;
  /** An imatrix is given (changes Q4_0/Q5_0 ffn_down and the Q2_K_S imatrix check). */
  hasImatrix?: boolean;
  /** --tensor-type overrides ("REGEX=TYPE" strings or parsed); first matching pattern wins. */
  tensorTypes?: readonly (string | TensorTypeOverride)[];
  outputTensorType?: string;
  tokenEmbeddingType?: string;
  /** --pure: no mixture rules (overrides and shape fallbacks still apply). */
  pure?: boolean;
  /** --leave-output-tensor. */
  leaveOutputTensor?: boolean;
  /**
   * Decide (and return) the tensors in the order given instead of llama-model-loader's (layer, name) order:
   * llama-quantize --keep-split processes them by input file, then offset.
   */
  keepOrder?: boolean;
  /**
   * Without an imatrix, a tensor that requires one makes llama-quantize fail; with `dryRun` the plan is
   * returned anyway (MixPlan.requiresImatrix lists them), like llama-quantize --dry-run.
   */
  dryRun?: boolean;
}

export interface MixPlan {
  ftype: FtypeInfo;
  /** general.file_type of the output. */
  fileType: number;
  /** In llama-quantize order. */
  tensors: MixTensorOut[];
  /** Number of shape fallbacks (llama-quantize's "N of M tensor(s) required fallback quantization"). */
  nFallback: number;
  /** Names of tensors that need an imatrix entry. */
  requiresImatrix: string[];
}

/**
 * tensor_type_fallback: the type a row of `ne0` values gets instead of `target` when it does not divide
 * the block (the table's fallback, else a block of 32 or less stays; then the last resort).
 */
export function typeFallback(ne0: number, target: GgmlType): GgmlType {
  if (ne0 % target.blockSize === 0) return target;
  let ret: GgmlType;
  if (target.fallback !== null) ret = ggmlType(target.fallback);
  else if (target.blockSize <= 32) ret = target;
  else throw new DeepcastError(`no tensor type fallback is defined for type ${target.name}`);
  if (ne0 % ret.blockSize !== 0) ret = ggmlType(quantMixes().fallback.last);
  return ret;
}

function useMoreBits(i: number, n: number): boolean {
  const n8 = Math.trunc(n / 8);
  return i < n8 || i >= Math.trunc((7 * n) / 8) || (i - n8) % 3 === 2;
}

interface State {
  nAttentionWv: number;
  iAttentionWv: number;
  iFfnDown: number;
  iFfnGate: number;
  iFfnUp: number;
  nFallback: number;
  hasTiedEmbeddings: boolean;
}

/**
 * Chooses the type of every tensor as llama-quantize does, processing (and returning) the tensors in
 * llama-quantize's order. Throws a DeepcastError like llama-quantize when a tensor requires an imatrix
 * and none is given (unless `dryRun`).
 */
export function planQuantMix(tensors: readonly MixTensorIn[], opts: MixOptions): MixPlan {
  const m = quantMixes();
  const ftype = parseFtype(opts.ftype);
  const defaultType = ftype.defaultType;
  const overrides = (opts.tensorTypes ?? []).map((o) => (typeof o === "string" ? parseTensorTypeOverride(o) : o));
  const regexes = overrides.map((o) => ({ re: new RegExp(o.pattern), type: o.type }));
  const outputTensorType = opts.outputTensorType !== undefined ? ggmlType(opts.outputTensorType) : undefined;
  const tokenEmbeddingType = opts.tokenEmbeddingType !== undefined ? ggmlType(opts.tokenEmbeddingType) : undefined;
  const nExpert = opts.nExpert;
  const nHeadKv = opts.nHeadKv ?? opts.nHead ?? 0;
  const nGqa = nHeadKv > 0 ? Math.trunc((opts.nHead ?? 0) / nHeadKv) : 0;
  const hasImatrix = opts.hasImatrix ?? false;
  if (!Number.isSafeInteger(opts.nLayer) || opts.nLayer < 1) throw new DeepcastError(`invalid layer count ${opts.nLayer}`);

  const sorted = opts.keepOrder ? [...tensors] : [...tensors].sort((a, b) => compareQuantizeOrder(a.name, b.name));
  const attnVLike = new Set(m.categories.attnVLike);
  const st: State = { nAttentionWv: 0, iAttentionWv: 0, iFfnDown: 0, iFfnGate: 0, iFfnUp: 0, nFallback: 0, hasTiedEmbeddings: true };
  for (const t of sorted) {
    const cat = tensorCategory(t.name);
    if (attnVLike.has(cat)) st.nAttentionWv++;
    if (cat === "output") st.hasTiedEmbeddings = false;
  }
  const nLayer = opts.nLayer;

  /** layer_info: the layer from the name when n_expert > 1, else the running counter. */
  const layerInfo = (counter: number, name: string): [number, number] => {
    if (Math.max(1, nExpert) > 1) {
      const l = blkLayer(name);
      if (l < 0 && !/^blk\.[+-]?\d/.test(name)) throw new DeepcastError("failed to determine the layer of this tensor", { tensor: name });
      if (l < 0 || l >= nLayer) throw new DeepcastError(`bad layer ${l}, must be in [0, ${nLayer})`, { tensor: name });
      return [l, nLayer];
    }
    return [counter, nLayer];
  };

  /** Where a tensor sits for the counter rules: its (layer, n_layer) and the raw running counter. */
  interface Position {
    layer: () => [number, number];
    counter: number;
  }
  const holds = (when: RuleWhen | undefined, current: GgmlType, ne0: number, pos: Position | null): boolean => {
    if (!when) return true;
    if (when.nExpert !== undefined && nExpert !== when.nExpert) return false;
    if (when.nExpertNot !== undefined && nExpert === when.nExpertNot) return false;
    if (when.nExpertAtLeast !== undefined && !(nExpert >= when.nExpertAtLeast)) return false;
    if (when.gqaAtLeast !== undefined && !(nGqa >= when.gqaAtLeast)) return false;
    if (when.imatrix !== undefined && hasImatrix !== when.imatrix) return false;
    if (when.ne0NotMultipleOfBlock && ne0 % current.blockSize === 0) return false;
    if (when.currentNot !== undefined && current === ggmlType(when.currentNot)) return false;
    const needsPosition = when.useMoreBits || when.layerBelowFraction !== undefined || when.indexBelow !== undefined ||
      when.layerMiddle || when.counterBelowFraction !== undefined;
    if (needsPosition) {
      if (!pos) throw new DeepcastError("internal: quant-mixes.json rule needs a layer/index for this category");
      if (when.counterBelowFraction !== undefined && !(pos.counter < Math.trunc(nLayer / when.counterBelowFraction))) return false;
      if (when.useMoreBits || when.layerBelowFraction !== undefined || when.indexBelow !== undefined || when.layerMiddle) {
        const [i, n] = pos.layer();
        if (when.useMoreBits && !useMoreBits(i, n)) return false;
        if (when.layerBelowFraction !== undefined && !(i < Math.trunc(n / when.layerBelowFraction))) return false;
        if (when.indexBelow !== undefined && !(i < when.indexBelow)) return false;
        if (when.layerMiddle && !(i >= Math.trunc(n / 8) && i < Math.trunc((7 * n) / 8))) return false;
      }
    }
    return true;
  };

  const applyRules = (key: string, current: GgmlType, ne0: number, pos: Position | null): GgmlType => {
    const own = m.rules[ftype.name]?.[key] ?? [];
    const onlyOwn = ftype.ownRulesOnly && key !== "output" && key !== "token_embd";
    const rules = onlyOwn ? own : [...(m.rules.common?.[key] ?? []), ...own, ...(m.rules.commonLast?.[key] ?? [])];
    for (const r of rules) if (holds(r.when, current, ne0, pos)) return ggmlType(r.type);
    return current;
  };

  /**
   * The position of an ffn_* tensor. Outside the IQ1/IQ2 group llama.cpp parses the layer from the name
   * up front (and fails on a name without one); inside it only the raw counter is used.
   */
  const ffnPosition = (i: number, name: string): Position => {
    if (ftype.ownRulesOnly) return { layer: () => layerInfo(i, name), counter: i };
    const layer = layerInfo(i, name);
    return { layer: () => layer, counter: i };
  };

  /** llama_tensor_get_type_impl. */
  const mixture = (name: string, ne0: number, cat: string, current: GgmlType): GgmlType => {
    if (cat === "output" || (st.hasTiedEmbeddings && cat === "token_embd")) {
      return outputTensorType ?? applyRules("output", current, ne0, null);
    }
    if (cat === "token_embd") return tokenEmbeddingType ?? applyRules("token_embd", current, ne0, null);
    if (attnVLike.has(cat)) {
      const i = st.iAttentionWv++;
      return applyRules("attn_v", current, ne0, { layer: () => [i, st.nAttentionWv], counter: i });
    }
    if (cat === "ffn_down") {
      const i = st.iFfnDown++;
      return applyRules("ffn_down", current, ne0, ffnPosition(i, name));
    }
    if (cat === "ffn_gate") {
      const i = st.iFfnGate++;
      return applyRules("ffn_gate", current, ne0, ffnPosition(i, name));
    }
    if (cat === "ffn_up") {
      const i = st.iFfnUp++;
      return applyRules("ffn_up", current, ne0, ffnPosition(i, name));
    }
    return applyRules(cat, current, ne0, null);
  };

  const fallback = (ne0: number, target: GgmlType): GgmlType => {
    const ret = typeFallback(ne0, target);
    if (ne0 % target.blockSize !== 0) st.nFallback++;
    return ret;
  };

  const out: MixTensorOut[] = [];
  const requiresImatrix: string[] = [];
  for (const t of sorted) {
    const inputType = ggmlType(t.type);
    const ne = [...t.ne].slice(0, ggmlNDims(t.ne));
    const ne0 = ne[0] ?? 1;
    const quantizable = tensorAllowsQuantization(t.name, t.ne, opts.leaveOutputTensor);
    const cat = tensorCategory(t.name);
    let type = inputType;
    let fallbackFrom: GgmlType | undefined;
    let manual = false;
    if (quantizable) {
      if (tokenEmbeddingType && cat === "token_embd" &&
          !(t.name === "per_layer_token_embd.weight" && regexes.some((r) => r.re.test(t.name)))) {
        type = tokenEmbeddingType;
      } else if (outputTensorType && cat === "output") {
        type = outputTensorType;
      } else {
        type = defaultType;
        if (defaultType.quantized) {
          const hit = regexes.find((r) => r.re.test(t.name));
          if (hit) {
            type = hit.type;
            manual = true;
          } else if (!opts.pure) {
            type = mixture(t.name, ne0, cat, type);
          }
          const fb = fallback(ne0, type);
          if (fb !== type) fallbackFrom = type;
          type = fb;
        }
      }
    }
    const needsImatrix = !m.imatrixRequired.exemptNames.includes(t.name) &&
      (type.imatrix === "required" || ftype.requiresImatrix.includes(type));
    if (quantizable && needsImatrix) requiresImatrix.push(t.name);
    out.push({
      name: t.name,
      ne,
      inputType,
      type,
      quantizable,
      ...(fallbackFrom ? { fallbackFrom } : {}),
      ...(manual ? { manual } : {}),
      requiresImatrix: quantizable && needsImatrix,
    });
  }
  if (requiresImatrix.length > 0 && !hasImatrix && !opts.dryRun) {
    throw new DeepcastError(
      `${ftype.name} requires an importance matrix (--imatrix FILE, or --calibration TEXT to compute one): ${requiresImatrix.length} tensor(s) need one: ${listNames(requiresImatrix)}`,
      { code: "IMATRIX_MISSING" },
    );
  }
  return { ftype, fileType: ftype.id, tensors: out, nFallback: st.nFallback, requiresImatrix };
}
