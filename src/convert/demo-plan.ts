/**
 * Plan for `deepcast to-demo`: which input tensor becomes which tensor of which rank file of
 * DeepSeek's inference demo, with the names and splits of its `inference/convert.py` (the table is
 * formats/demo-names.json), the checks convert.py does not make (FP8 blocks straddling ranks, scale
 * splits, experts out of range), and the demo's ModelArgs config derived from the HF config.json.
 * Planned from the headers alone; nothing is read from the tensor data here. The plan types, the
 * rank and expert checks and the rank-file layout are shared with DeepSeek-V4 (./demo-plan-v4.ts).
 */
import { DeepcastError } from "../errors.js";
import { demoName, demoNamesFormat, rankFileName, routedExpertIndex } from "../formats/demo-names.js";
import { FP8_BLOCK, scaleNameOf, scaleShape, weightOfScale } from "../formats/fp8.js";
import { locate, type Checkpoint, type TensorLocation } from "../io/checkpoint.js";
import { safetensorsOrder, type Dtype } from "../io/dtypes.js";
import { safetensorsFileSize, type TensorSpec } from "../io/safetensors.js";

// ---------------------------------------------------------------------------------------------
// plan types
// ---------------------------------------------------------------------------------------------

export type DemoDtype = "keep" | "bf16";

export type Placement =
  /** Every rank gets the whole tensor. */
  | { kind: "replicate" }
  /** One rank gets the whole tensor (a routed expert). */
  | { kind: "rank"; rank: number; expert: number }
  /** Rank i gets slice i of mp equal slices along `dim`. */
  | { kind: "split"; dim: number };

/** One input tensor, read once, and where its bytes go. */
export interface DemoInput {
  hfName: string;
  /** Name in the demo's state dict. */
  name: string;
  from: TensorLocation;
  /** Index of `from.file` in the checkpoint's sorted shard list. */
  shardIndex: number;
  /**
   * copy: bytes as they are (relabelled to `dtype`: V4's packed FP4 I8 experts as F4);
   * fp8: dequantized to BF16 with `scale` (as fp8_cast_bf16.py; V4: E8M0 tiles);
   * fp4-fp8: packed FP4 cast losslessly to FP8 e4m3 with `scale` (its FP4 group scales);
   * fp4-fp8-scale: the E8M0 tile scales of that cast, from this FP4 scale tensor of a weight `fp4Weight`.
   */
  op: "copy" | "fp8" | "fp4-fp8" | "fp4-fp8-scale";
  scale?: TensorLocation;
  /** How `scale` stores the fp8 op's block scales: F32 `_scale_inv` (V3.x, default) or E8M0 `.scale` (V4). */
  scaleKind?: "f32" | "e8m0";
  /** fp4-fp8-scale: the logical [rows, cols] of the FP4 weight. */
  fp4Weight?: { rows: number; cols: number };
  /** Output dtype and shape before the split. */
  dtype: Dtype;
  shape: number[];
  place: Placement;
}

export interface RankFile {
  rank: number;
  name: string;
  /** In safetensors-library order (dtype descending, then name), as convert.py's save_file lays them out. */
  tensors: TensorSpec[];
  bytes: number;
}

export interface DemoPlanOptions {
  modelParallel: number;
  /** Routed experts; default: config n_routed_experts. */
  nExperts?: number;
  dtype: DemoDtype;
  /** The demo's max_seq_len; default min(max_position_embeddings, 4 x original_seq_len). */
  maxSeqLen?: number;
}

export interface DemoPlan {
  mp: number;
  nExperts: number;
  dtype: DemoDtype;
  /** DeepSeek-V4 only: how the packed FP4 routed experts are written (F4 as stored, or FP8). */
  expertDtype?: "fp4" | "fp8";
  /** In read order: shards sorted by name, tensors in data order. */
  inputs: DemoInput[];
  ranks: RankFile[];
  /** The demo ModelArgs written as OUT/config.json. */
  modelArgs: Record<string, unknown>;
  /** Non-weight files copied as they are (convert.py: HF/*token*). */
  copyFiles: string[];
  /** MTP tensors left out: V3 the MTP layers (index >= num_hidden_layers), V4 the MTP embedding and head. */
  skippedMtp: number;
  /** `*_scale_inv` tensors consumed by dequantization (--dtype bf16). */
  droppedScales: number;
  fp8Dequantized: number;
  /** V4 --expert-dtype fp8: packed FP4 expert weights cast to FP8. */
  fp4CastToFp8?: number;
  inputBytes: number;
  outputBytes: number;
}

function globToRegExp(glob: string): RegExp {
  return new RegExp(`^${glob.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`);
}

// ---------------------------------------------------------------------------------------------
// config
// ---------------------------------------------------------------------------------------------

function num(v: unknown): v is number {
  return typeof v === "number" && Number.isFinite(v);
}

/** The demo's ModelArgs (configs/config_671B.json plus the YaRN fields) from the HF config.json. */
export function demoModelArgs(config: Record<string, unknown>, opts: { dtype: "fp8" | "bf16"; maxSeqLen?: number; file: string }): Record<string, unknown> {
  const f = demoNamesFormat();
  const bad = (msg: string) => new DeepcastError(msg, { file: opts.file });
  const args: Record<string, unknown> = {};
  for (const m of f.modelArgs) {
    const v = config[m.hf];
    if (v === undefined || v === null) {
      if (m.optional) continue;
      if (m.default === undefined) throw bad(`config.json has no ${m.hf}, needed for the demo's ${m.demo}`);
      args[m.demo] = m.default;
    } else {
      args[m.demo] = v;
    }
  }
  const rope = (config.rope_scaling ?? null) as Record<string, unknown> | null;
  const maxPos = config.max_position_embeddings;
  if (!num(maxPos)) throw bad("config.json has no max_position_embeddings");
  const ropeTheta = num(config.rope_theta) ? config.rope_theta : 10000;
  let yarn: Record<string, unknown>;
  if (rope) {
    const type = rope.type ?? rope.rope_type;
    if (type !== "yarn") throw bad(`rope_scaling type ${JSON.stringify(type)} is not supported: the demo implements YaRN only`);
    const orig = rope.original_max_position_embeddings;
    const factor = rope.factor;
    if (!num(orig) || !num(factor)) throw bad("rope_scaling lacks original_max_position_embeddings or factor");
    const maxSeqLen = opts.maxSeqLen ?? Math.min(maxPos, 4 * orig);
    // The demo applies YaRN (frequencies and the softmax mscale) only when max_seq_len > original_seq_len.
    if (maxSeqLen <= orig) {
      throw bad(`max_seq_len ${maxSeqLen} must exceed original_seq_len ${orig}, or the demo silently turns YaRN off`);
    }
    yarn = {
      max_seq_len: maxSeqLen,
      original_seq_len: orig,
      rope_theta: ropeTheta,
      rope_factor: factor,
      beta_fast: num(rope.beta_fast) ? rope.beta_fast : 32,
      beta_slow: num(rope.beta_slow) ? rope.beta_slow : 1,
      // The demo's mscale feeds the softmax scale, which HF takes from mscale_all_dim.
      mscale: num(rope.mscale_all_dim) ? rope.mscale_all_dim : num(rope.mscale) ? rope.mscale : 1.0,
    };
  } else {
    // No YaRN: original_seq_len >= max_seq_len keeps the demo's correction off.
    const maxSeqLen = opts.maxSeqLen ?? maxPos;
    yarn = { max_seq_len: maxSeqLen, original_seq_len: Math.max(maxPos, maxSeqLen), rope_theta: ropeTheta, rope_factor: 1, beta_fast: 32, beta_slow: 1, mscale: 1.0 };
  }
  const q = config.quantization_config as Record<string, unknown> | undefined;
  const scaleFmt = opts.dtype === "fp8" && typeof q?.scale_fmt === "string" ? { scale_fmt: q.scale_fmt } : {};
  const { max_seq_len, ...rest } = yarn;
  // ModelArgs field order (inference/model.py); max_batch_size is a runtime choice left to its default.
  return { max_seq_len, dtype: opts.dtype, ...scaleFmt, ...args, ...rest };
}

// ---------------------------------------------------------------------------------------------
// plan
// ---------------------------------------------------------------------------------------------

/** What the model-parallel split needs from the config, checked: the rank count and the routed experts per rank. */
export interface DemoParallel {
  config: Record<string, unknown>;
  /** config.json as messages name it. */
  cfgFile: string;
  mp: number;
  nExperts: number;
  nLocal: number;
}

/**
 * The checks every generation's convert.py needs before a split: --model-parallel a positive integer,
 * a config.json, the routed-expert count (flag or config, agreeing) divisible by the ranks, the heads too.
 */
export function checkDemoParallel(ckpt: Checkpoint, opts: { modelParallel: number; nExperts?: number }): DemoParallel {
  const mp = opts.modelParallel;
  if (!Number.isSafeInteger(mp) || mp < 1) throw new DeepcastError(`--model-parallel must be a positive integer, got ${mp}`, { code: "USAGE" });
  const config = ckpt.config;
  if (!config) {
    throw new DeepcastError("the input has no config.json: it is needed for the layer count (to drop the MTP layers) and the demo's config; copy the model's original config.json next to the shards", { file: ckpt.source.description });
  }
  const cfgFile = `${ckpt.source.description}/config.json`;
  const cfgExperts = num(config.n_routed_experts) ? config.n_routed_experts : undefined;
  const nExperts = opts.nExperts ?? cfgExperts ?? 256;
  if (!Number.isSafeInteger(nExperts) || nExperts < 1) {
    // Blame what the value came from: the flag only when the user passed it.
    throw opts.nExperts !== undefined
      ? new DeepcastError(`--n-experts must be a positive integer, got ${nExperts}`, { code: "USAGE" })
      : new DeepcastError(`config.json: n_routed_experts must be a positive integer, got ${nExperts}`, { file: cfgFile, code: "CONFIG_MISMATCH" });
  }
  if (cfgExperts !== undefined && nExperts !== cfgExperts) {
    throw new DeepcastError(`--n-experts ${nExperts} disagrees with n_routed_experts ${cfgExperts} in config.json: experts would land on the wrong ranks or be lost`, { file: cfgFile, code: "CONFIG_MISMATCH" });
  }
  if (nExperts % mp !== 0) {
    throw new DeepcastError(`cannot give ${nExperts} routed experts to ${mp} ranks: the expert count must be divisible by --model-parallel`);
  }
  const nHeads = config.num_attention_heads;
  if (num(nHeads) && nHeads % mp !== 0) {
    throw new DeepcastError(`cannot split ${nHeads} attention heads over ${mp} ranks: num_attention_heads must be divisible by --model-parallel`, { file: cfgFile });
  }
  return { config, cfgFile, mp, nExperts, nLocal: nExperts / mp };
}

/** Each rank file's tensors (safetensors-library order) from the planned inputs; two inputs may not share a demo name. */
/**
 * Where convert.py puts a tensor: a routed expert whole on the rank that owns it, a tensor with a split
 * dimension narrowed across the ranks (after `checkSplit` has refused what cannot be narrowed), the
 * rest on every rank.
 */
export function placeTensor(name: string, hfName: string, split: number | null, par: { mp: number; nExperts: number; nLocal: number; file: string },
                            checkSplit: () => void): Placement {
  const expert = routedExpertIndex(name, hfName);
  if (expert !== null) {
    if (expert >= par.nExperts) {
      throw new DeepcastError(`routed expert ${expert} is outside the ${par.nExperts} experts (--n-experts / n_routed_experts): no rank would hold it`, { file: par.file, tensor: hfName });
    }
    return { kind: "rank", rank: Math.floor(expert / par.nLocal), expert };
  }
  if (split !== null && par.mp > 1) {
    checkSplit();
    return { kind: "split", dim: split };
  }
  return { kind: "replicate" };
}

export function layoutRanks(inputs: readonly DemoInput[], mp: number): RankFile[] {
  const perRank: TensorSpec[][] = Array.from({ length: mp }, () => []);
  for (const t of inputs) {
    const p = t.place;
    if (p.kind === "rank") perRank[p.rank]!.push({ name: t.name, dtype: t.dtype, shape: t.shape });
    else {
      const shape = p.kind === "split" ? t.shape.map((d, i) => (i === p.dim ? d / mp : d)) : t.shape;
      for (const r of perRank) r.push({ name: t.name, dtype: t.dtype, shape });
    }
  }
  const seen = new Map<string, string>();
  for (const t of inputs) {
    const other = seen.get(t.name);
    if (other !== undefined) throw new DeepcastError(`two input tensors map to the demo name ${t.name} (the other is ${other})`, { tensor: t.hfName });
    seen.set(t.name, t.hfName);
  }
  return perRank.map((tensors, rank) => {
    tensors.sort(safetensorsOrder);
    return { rank, name: rankFileName(rank, mp), tensors, bytes: safetensorsFileSize(tensors, null) };
  });
}

export function planToDemo(ckpt: Checkpoint, opts: DemoPlanOptions): DemoPlan {
  const f = demoNamesFormat();
  const where = (file: string) => `${ckpt.source.description}/${file}`;
  const { config, cfgFile, mp, nExperts, nLocal } = checkDemoParallel(ckpt, opts);
  const nLayers = config.num_hidden_layers;
  if (!num(nLayers)) throw new DeepcastError("config.json has no num_hidden_layers", { file: cfgFile });
  const layerRe = new RegExp(f.layerPattern);

  const inputs: DemoInput[] = [];
  let skippedMtp = 0;
  let droppedScales = 0;
  let fp8Dequantized = 0;
  let inputBytes = 0;
  let anyFp8Out = false;
  for (const [shardIndex, file] of ckpt.shards.entries()) {
    const header = ckpt.headers.get(file)!;
    for (const entry of header.tensors) {
      const hfName = entry.name;
      const layer = layerRe.exec(hfName);
      if (layer && Number(layer[1]) >= nLayers) {
        skippedMtp++;
        continue;
      }
      const isScale = weightOfScale(hfName) !== null;
      if (isScale && opts.dtype === "bf16") {
        // Consumed by its weight's dequantization (as fp8_cast_bf16.py drops it).
        droppedScales++;
        continue;
      }
      const from: TensorLocation = { file, entry };
      const { name, split } = demoName(hfName, { file: where(file) });
      let op: DemoInput["op"] = "copy";
      let dtype: Dtype = entry.dtype;
      let scale: TensorLocation | undefined;
      if (entry.dtype === "F8_E5M2") {
        throw new DeepcastError("F8_E5M2 weights are not supported (DeepSeek checkpoints use F8_E4M3)", { file: where(file), tensor: hfName });
      }
      if (entry.dtype === "F8_E4M3") {
        scale = checkScale(from, locate(ckpt, scaleNameOf(hfName)), where);
        if (opts.dtype === "bf16") {
          op = "fp8";
          dtype = "BF16";
          fp8Dequantized++;
        } else {
          anyFp8Out = true;
        }
      }
      const place = placeTensor(name, hfName, split, { mp, nExperts, nLocal, file: where(file) }, () => checkSplit(ckpt, from, name, split!, mp, opts.dtype, where));
      inputBytes += entry.end - entry.begin + (op === "fp8" ? scale!.entry.end - scale!.entry.begin : 0);
      inputs.push({ hfName, name, from, shardIndex, op, scale, dtype, shape: entry.shape, place });
    }
  }

  const ranks = layoutRanks(inputs, mp);

  const modelArgs = demoModelArgs(config, { dtype: anyFp8Out ? "fp8" : "bf16", maxSeqLen: opts.maxSeqLen, file: cfgFile });
  const copyRe = globToRegExp(f.copyFiles);
  const copyFiles = ckpt.files.map((x) => x.name).filter((n) => copyRe.test(n) && !n.startsWith("."));
  return {
    mp,
    nExperts,
    dtype: opts.dtype,
    inputs,
    ranks,
    modelArgs,
    copyFiles,
    skippedMtp,
    droppedScales,
    fp8Dequantized,
    inputBytes,
    outputBytes: ranks.reduce((a, r) => a + r.bytes, 0),
  };
}

function checkScale(weight: TensorLocation, scale: TensorLocation | undefined, where: (f: string) => string): TensorLocation {
  const w = weight.entry;
  if (!scale) {
    throw new DeepcastError(`FP8 weight has no ${scaleNameOf(w.name)} in the checkpoint`, { file: where(weight.file), tensor: w.name });
  }
  if (w.shape.length !== 2) {
    throw new DeepcastError(`FP8 weight must be 2-D, found shape ${JSON.stringify(w.shape)}`, { file: where(weight.file), tensor: w.name });
  }
  const s = scale.entry;
  const expected = scaleShape(w.shape[0]!, w.shape[1]!);
  if (s.dtype !== "F32") throw new DeepcastError(`scale must be F32, found ${s.dtype}`, { file: where(scale.file), tensor: s.name });
  if (s.shape.length !== 2 || s.shape[0] !== expected[0] || s.shape[1] !== expected[1]) {
    throw new DeepcastError(
      `scale shape ${JSON.stringify(s.shape)} does not match weight ${JSON.stringify(w.shape)}: expected ${JSON.stringify(expected)} (ceil(rows/128) x ceil(cols/128))`,
      { file: where(scale.file), tensor: s.name });
  }
  return scale;
}

/**
 * convert.py asserts size(dim) % mp == 0. Kept FP8 adds a constraint it does not check: every rank
 * boundary must fall on a 128-block edge, or a scale block would cover rows (or columns) of two
 * ranks; for a `.scale` tensor this is checked on its weight, so the error names the real cause.
 */
function checkSplit(ckpt: Checkpoint, t: TensorLocation, name: string, dim: number, mp: number, dtype: DemoDtype, where: (f: string) => string): void {
  const e = t.entry;
  const fail = (why: string, tensor = e.name, file = t.file) =>
    new DeepcastError(`cannot split ${name} ${JSON.stringify(e.shape)} into ${mp} ranks along dim ${dim}: ${why}`, { file: where(file), tensor });
  if (dim >= e.shape.length) throw fail(`it has only ${e.shape.length} dims`);
  const size = e.shape[dim]!;
  if (dtype === "keep") {
    const weightName = weightOfScale(e.name);
    const weight = weightName !== null ? locate(ckpt, weightName) : e.dtype === "F8_E4M3" ? t : undefined;
    if (weight && weight.entry.dtype === "F8_E4M3") {
      const w = weight.entry;
      const wSize = w.shape[dim];
      if (wSize !== undefined && (wSize % mp !== 0 || (wSize / mp) % FP8_BLOCK !== 0)) {
        throw new DeepcastError(
          `cannot split FP8 weight ${demoName(w.name).name} ${JSON.stringify(w.shape)} into ${mp} ranks along dim ${dim} with --dtype keep: ` +
            (wSize % mp !== 0
              ? `${wSize} is not divisible by ${mp}`
              : `each rank would get ${wSize / mp}, not a multiple of the ${FP8_BLOCK}-wide scale blocks, so a block would straddle ranks`) +
            " (--dtype bf16 dequantizes to BF16 first, which splits anywhere)",
          { file: where(weight.file), tensor: w.name });
      }
    }
  }
  if (size % mp !== 0) throw fail(`dim ${dim} has ${size}, not divisible by ${mp}`);
}
