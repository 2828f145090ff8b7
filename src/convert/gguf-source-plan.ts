/**
 * `deepcast to-gguf IN.gguf`: the plan for requantizing a llama.cpp deepseek2 GGUF (one file or a split
 * set), as llama.cpp v0.4.0's llama-quantize does it (src/llama-quant.cpp, llama_model_quantize_impl):
 *
 *  - tensors: every tensor of every part, in llama-model-loader's weights_map order (layer, then name);
 *    the type of each is llama-quantize's choice (quant/mix.ts) from the GGUF's own hparams
 *    (`deepseek2.block_count`, `expert_count`, `attention.head_count(_kv)`) and tensor infos;
 *  - a tensor whose type stays is copied byte for byte; one whose type changes is converted to float32
 *    (F32 as is, F16/BF16 widened, a quantized type dequantized: only with `allowRequantize`) and
 *    quantized, with its imatrix entry when one is given;
 *  - metadata: the first part's KVs in order, `general.quantization_version` and `general.file_type`
 *    moved to the end, the `split.*` keys dropped, then the `quantize.imatrix.*` keys (each set the way
 *    gguf_set_val does: an existing key is removed and appended). Splits of the output (--split-max-*)
 *    follow gguf-split, as for a checkpoint input; `keepSplit` keeps the input's parts (llama-quantize --keep-split).
 */
import { basename, resolve } from "node:path";
import { DeepcastError } from "../errors.js";
import { archKey, Keys } from "../formats/gguf-keys.js";
import { ggmlQuantTypes, type GgmlType } from "../formats/ggml-types.js";
import { kv, setKvLast, type GgufKV } from "../io/gguf-kv.js";
import { KV_SPLIT_COUNT, KV_SPLIT_NO, KV_SPLIT_TENSORS_COUNT, planGgufLayout, type GgufLayout, type GgufSplitOptions } from "../io/gguf-layout.js";
import { GgufReader, type GgufTensorInfo } from "../io/gguf-reader.js";
import { imatrixForTensors, imatrixKvs, type Imatrix, type ImatrixUse } from "../io/imatrix.js";
import { parseFtype, planQuantMix, type FtypeInfo, type MixOptions, type MixPlan, type MixTensorOut } from "../quant/mix.js";
import type { PlanDescription } from "../io/dry-run.js";
import { listNames } from "../units.js";
import { describeToGguf } from "./to-gguf.js";

/** The architecture deepcast requantizes. */
export const GGUF_SOURCE_ARCH = "deepseek2";

export interface GgufSourceOptions extends Omit<MixOptions, "ftype" | "nLayer" | "nExpert" | "nHead" | "nHeadKv" | "hasImatrix"> {
  /** Output type or llama.cpp mix (name or llama_ftype id). */
  ftype: string | number;
  split?: GgufSplitOptions;
  imatrix?: Imatrix;
  /** llama-quantize --allow-requantize: a quantized source tensor whose type changes is dequantized, then quantized. */
  allowRequantize?: boolean;
  /**
   * llama-quantize --keep-split: one output file per input part, each tensor in its part, tensors taken (and
   * their types decided) in input order: by part, then offset. Not with `split`.
   */
  keepSplit?: boolean;
}

export interface GgufSourceTensor {
  name: string;
  /** Dims as written (trailing 1-dims dropped, as llama-quantize writes them). */
  ne: number[];
  type: GgmlType;
  /** The tensor in the input: type, file index, offsets. */
  src: GgufTensorInfo;
  mix: MixTensorOut;
}

export interface GgufSourcePlan {
  /** The input model (headers read; data read on demand by the run). */
  reader: GgufReader;
  /** The GGUF's hparams the type rules used. */
  hparams: { nLayer: number; nExpert: number; nHead: number; nHeadKv: number };
  output: { ftype: FtypeInfo; kvs: GgufKV[]; tensors: GgufSourceTensor[]; mix: MixPlan };
  layout: GgufLayout;
  /** With an imatrix: the file and the weights each quantized tensor gets. */
  imatrix?: { loaded: Imatrix } & ImatrixUse;
  /** Quantized source tensors that change type (dequantized then quantized again). */
  requantized: string[];
}

/** An integer hparam of the GGUF (an array: its first element, as llama.cpp's per-layer keys). */
function hparam(reader: GgufReader, key: string): number | undefined {
  const name = archKey(key, GGUF_SOURCE_ARCH);
  const e = reader.kv(name);
  if (!e) return undefined;
  const v = e.type === "ARRAY" ? e.value[0] : e.value;
  const n = typeof v === "bigint" ? Number(v) : v;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) {
    throw new DeepcastError(`GGUF metadata ${name} is ${JSON.stringify(typeof v === "bigint" ? String(v) : v)}, expected a non-negative integer`, { file: reader.path, code: "BAD_HEADER" });
  }
  return n;
}

/** Opens a GGUF model (any part of a split set) and checks it is one deepcast requantizes. */
export async function openGgufSource(path: string): Promise<GgufReader> {
  const reader = await GgufReader.open(path);
  const arch = reader.kv(Keys.General.ARCHITECTURE);
  if (!arch) throw new DeepcastError("the GGUF has no general.architecture", { file: reader.path, code: "BAD_HEADER" });
  if (arch.value !== GGUF_SOURCE_ARCH) {
    throw new DeepcastError(`GGUF architecture is ${JSON.stringify(arch.value)}: deepcast requantizes "${GGUF_SOURCE_ARCH}" GGUFs (DeepSeek-V2/V3) only`, { file: reader.path, code: "UNSUPPORTED" });
  }
  return reader;
}

/** Plans requantizing the GGUF at `input` to `out` (no tensor data is read). */
export async function planGgufSource(input: string, out: string, opts: GgufSourceOptions): Promise<GgufSourcePlan> {
  const reader = await openGgufSource(input);
  const file = reader.path;
  const nLayer = hparam(reader, Keys.LLM.BLOCK_COUNT);
  if (nLayer === undefined || nLayer < 1) throw new DeepcastError(`GGUF metadata has no ${archKey(Keys.LLM.BLOCK_COUNT, GGUF_SOURCE_ARCH)}`, { file, code: "BAD_HEADER" });
  const nExpert = hparam(reader, Keys.LLM.EXPERT_COUNT) ?? 0;
  const nHead = hparam(reader, Keys.Attention.HEAD_COUNT);
  if (nHead === undefined) throw new DeepcastError(`GGUF metadata has no ${archKey(Keys.Attention.HEAD_COUNT, GGUF_SOURCE_ARCH)}`, { file, code: "BAD_HEADER" });
  // llama.cpp: head_count_kv defaults to head_count
  const nHeadKv = hparam(reader, Keys.Attention.HEAD_COUNT_KV) ?? nHead;
  const hparams = { nLayer, nExpert, nHead, nHeadKv };

  const { imatrix: im, split, allowRequantize, keepSplit, ftype: ftypeArg, ...mixOpts } = opts;
  if (keepSplit && split && (split.maxBytes !== undefined || split.maxTensors !== undefined)) {
    throw new DeepcastError("keep the input's split or split by size/tensor count, not both", { code: "USAGE" });
  }
  const ftype = parseFtype(ftypeArg);
  const inputs = keepSplit ? [...reader.tensors].sort((a, b) => a.file - b.file || a.offset - b.offset) : reader.tensors;
  const byName = new Map(inputs.map((t) => [t.name, t]));
  let mix: MixPlan;
  try {
    mix = planQuantMix(inputs.map((t) => ({ name: t.name, ne: t.ne, type: t.type })), { ...mixOpts, ...hparams, ftype: ftype.id, hasImatrix: im !== undefined, keepOrder: keepSplit ?? false });
  } catch (e) {
    // the mix names the tensor; the file is the input's
    if (e instanceof DeepcastError && e.file === undefined) {
      const message = e.tensor === undefined ? e.message : e.message.slice(0, -` (tensor ${e.tensor})`.length);
      throw new DeepcastError(message, { file, code: e.code, ...(e.tensor !== undefined ? { tensor: e.tensor } : {}) }, { cause: e });
    }
    throw e;
  }
  const tensors = mix.tensors.map((m): GgufSourceTensor => ({ name: m.name, ne: m.ne, type: m.type, src: byName.get(m.name)!, mix: m }));
  const changing = tensors.filter((t) => t.type !== t.src.type);
  const where = (t: GgufSourceTensor) => ({ file: reader.files[t.src.file]!.path, tensor: t.name });

  // a dry run shows the plan even where the run would refuse (types without a quantizer, requantizing)
  if (!opts.dryRun) {
    const unsupported = changing.find((t) => !t.type.quantizer);
    if (unsupported) {
      throw new DeepcastError(`deepcast does not quantize to ${unsupported.type.name} (it quantizes ${ggmlQuantTypes().map((t) => t.name).join(", ")})`, { ...where(unsupported), code: "UNSUPPORTED" });
    }
  }
  const requantized = changing.filter((t) => t.src.type.quantized);
  if (requantized.length > 0 && !opts.dryRun) {
    const first = requantized[0]!;
    if (!allowRequantize) {
      throw new DeepcastError(
        `requantizing from type ${first.src.type.name} is disabled: ${requantized.length} tensor(s) are already quantized (${listNames(requantized.map((t) => t.name))}); ` +
          "pass --allow-requantize to dequantize and quantize them again (quality suffers; start from an F16/BF16 GGUF where you can)",
        { ...where(first), code: "UNSUPPORTED" });
    }
    const undecodable = requantized.find((t) => !t.src.type.quantizer);
    if (undecodable) throw new DeepcastError(`deepcast cannot dequantize ${undecodable.src.type.name} tensors`, { ...where(undecodable), code: "UNSUPPORTED" });
  }

  const kvs = [...reader.kvs].filter((e) => e.key !== KV_SPLIT_NO && e.key !== KV_SPLIT_COUNT && e.key !== KV_SPLIT_TENSORS_COUNT);
  setKvLast(kvs, kv.u32(Keys.General.QUANTIZATION_VERSION, 2));
  setKvLast(kvs, kv.u32(Keys.General.FILE_TYPE, ftype.id));
  let imatrix: GgufSourcePlan["imatrix"];
  if (im) {
    for (const e of imatrixKvs(im)) setKvLast(kvs, e);
    imatrix = {
      loaded: im,
      ...imatrixForTensors(im, changing.map((t) => ({ name: t.name, ne: t.ne, requiresImatrix: t.mix.requiresImatrix })), { dryRun: opts.dryRun ?? false }),
    };
  }
  // llama-quantize --keep-split: split.no, split.count, split.tensors.count after every other key, as gguf-py orders them
  const layout = planGgufLayout(resolve(out), kvs, tensors.map((t) => ({ name: t.name, ne: t.ne, type: t.type })),
    keepSplit ? { style: "gguf-py", fileOf: tensors.map((t) => t.src.file) } : { style: "gguf-split", ...split });
  const inputPaths = new Set(reader.files.map((f) => resolve(f.path)));
  for (const f of layout.files) {
    if (inputPaths.has(f.path)) throw new DeepcastError(`output file ${basename(f.path)} would replace an input file: inputs are never modified; choose another output name`, { file: f.path, code: "OUTPUT_IN_INPUT" });
  }
  return { reader, hparams, output: { ftype, kvs, tensors, mix }, layout, ...(imatrix ? { imatrix } : {}), requantized: requantized.map((t) => t.name) };
}

/** The --dry-run description of a GGUF-input plan: to-gguf's, plus the input parts, hparams and what is requantized. */
export function describeGgufSource(plan: GgufSourcePlan, out: string): PlanDescription {
  const d = describeToGguf(plan, plan.reader.path, out);
  const parts = plan.reader.files.map((f) => ({ file: f.path, tensors: f.tensors.length, bytes: f.size }));
  const from = new Map<string, number>();
  for (const t of plan.reader.tensors) from.set(t.type.name, (from.get(t.type.name) ?? 0) + 1);
  return {
    ...d,
    fields: { ...d.fields, source: { format: "gguf", files: parts, hparams: plan.hparams, types: Object.fromEntries(from) }, requantized: plan.requantized },
    lines: [
      `input: ${parts.length} file(s), ${plan.reader.tensors.length} tensors (${[...from].map(([k, n]) => `${n} ${k}`).join(", ")}); ` +
        `block_count ${plan.hparams.nLayer}, expert_count ${plan.hparams.nExpert}, head_count ${plan.hparams.nHead}/${plan.hparams.nHeadKv}`,
      ...d.lines,
      ...(plan.requantized.length ? [`requantizes ${plan.requantized.length} already quantized tensor(s) (needs --allow-requantize)`] : []),
    ],
    inputBytes: parts.reduce((a, f) => a + f.bytes, 0),
  };
}
