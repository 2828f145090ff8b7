/**
 * Plan for `deepcast to-demo` on DeepSeek-V4: the rank files of V4's inference demo as its
 * `inference/convert.py` writes them (the rules are formats/demo-names-v4.json): names kept (no
 * `model.` prefix), the MTP module's own embedding and head left out, embed/head/wq_b/wo_a/attn_sink/
 * weights_proj split by rows and wo_b by columns (their E8M0 `.scale` with them), routed experts whole
 * per rank, wo_a dequantized to BF16, packed FP4 experts written as safetensors F4 or cast to FP8. The
 * plan types, the rank checks and the rank-file layout are V3's (./demo-plan.ts); the runner is shared
 * (./to-demo.ts). Planned from the headers alone.
 */
import { DeepcastError } from "../errors.js";
import { demoNameV4, demoNamesV4Format, type ExpertDtype } from "../formats/demo-names-v4.js";
import { FP8_BLOCK } from "../formats/fp8.js";
import { blockScaleOf, locate, type Checkpoint, type TensorLocation } from "../io/checkpoint.js";
import { weightOfBlockScale } from "../formats/block-scales.js";
import type { Dtype } from "../io/dtypes.js";
import { checkDemoParallel, layoutRanks, placeTensor, type DemoInput, type DemoPlan } from "./demo-plan.js";

export interface DemoPlanV4Options {
  modelParallel: number;
  /** Routed experts; default: config n_routed_experts. */
  nExperts?: number;
  /** Packed FP4 routed experts: fp4 (default, as convert.py without --expert-dtype) or fp8. */
  expertDtype?: ExpertDtype;
  /** The demo's max_seq_len; default: none written (ModelArgs' 4096). */
  maxSeqLen?: number;
}

const num = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

/**
 * The V4 demo's ModelArgs (inference/model.py; the keys of DeepSeek's inference/config.json) from the HF
 * config.json. `expertsFp4`: the routed experts are written as F4 (ModelArgs expert_dtype "fp4"; absent,
 * the demo builds them FP8 like the other weights).
 */
export function demoModelArgsV4(config: Record<string, unknown>, opts: { expertsFp4: boolean; maxSeqLen?: number; file: string }): Record<string, unknown> {
  const bad = (msg: string) => new DeepcastError(`config.json: ${msg}`, { file: opts.file, code: "CONFIG_MISMATCH" });
  const rope = (config.rope_scaling ?? null) as Record<string, unknown> | null;
  if (rope !== null) {
    const type = rope.type ?? rope.rope_type;
    if (type !== "yarn") throw bad(`rope_scaling type ${JSON.stringify(type)} is not supported: the V4 demo implements YaRN only`);
  }
  const args: Record<string, unknown> = {};
  if (opts.maxSeqLen !== undefined) {
    if (!Number.isSafeInteger(opts.maxSeqLen) || opts.maxSeqLen < 1) throw new DeepcastError(`--max-seq-len must be a positive integer, got ${opts.maxSeqLen}`, { code: "USAGE" });
    args.max_seq_len = opts.maxSeqLen;
  }
  args.dtype = "fp8";
  const q = config.quantization_config as Record<string, unknown> | undefined;
  if (typeof q?.scale_fmt === "string") args.scale_fmt = q.scale_fmt;
  if (opts.expertsFp4) args.expert_dtype = "fp4";
  for (const m of demoNamesV4Format().modelArgs) {
    // Without rope_scaling, original_seq_len stays at ModelArgs' 0: the demo then applies no YaRN.
    if (m.rope !== undefined && rope === null) continue;
    const v = m.rope !== undefined ? rope![m.rope] : config[m.hf!];
    const key = m.rope !== undefined ? `rope_scaling.${m.rope}` : m.hf!;
    if (v === undefined || v === null) {
      if (m.optional) continue;
      throw bad(`no ${key}, needed for the demo's ${m.demo}`);
    }
    if (m.demo === "compress_ratios" ? !Array.isArray(v) || !v.every(num) : !num(v) && typeof v !== "string") {
      throw bad(`${key} has an unexpected value ${JSON.stringify(v)} for the demo's ${m.demo}`);
    }
    args[m.demo] = v;
  }
  return args;
}

/** The E8M0 `.scale` of an FP8 or packed FP4 weight, which loadCheckpoint has checked. */
function scaleOf(ckpt: Checkpoint, weight: TensorLocation, kind: "fp8-e8m0" | "fp4-e8m0", where: (f: string) => string): TensorLocation {
  const s = blockScaleOf(ckpt, weight.entry.name);
  if (!s || s.rule.kind !== kind) {
    const what = kind === "fp8-e8m0" ? "FP8 weight has no F8_E8M0 .scale (DeepSeek-V4 layout)" : "packed FP4 expert weight has no F8_E8M0 .scale";
    throw new DeepcastError(`${what} in the checkpoint`, { file: where(weight.file), tensor: weight.entry.name });
  }
  return s.loc;
}

/**
 * convert.py narrows a tensor only when size(dim) % mp == 0 (its assert). An FP8 weight also needs
 * every rank boundary on a 128-block edge, or a scale block would cover two ranks (convert.py then fails
 * on the scale or on wo_a's dequantization); for a `.scale` this is checked on its weight.
 */
function checkSplitV4(ckpt: Checkpoint, t: TensorLocation, name: string, dim: number, mp: number, where: (f: string) => string): void {
  const e = t.entry;
  if (dim >= e.shape.length) throw new DeepcastError(`cannot split ${name} ${JSON.stringify(e.shape)} into ${mp} ranks along dim ${dim}: it has only ${e.shape.length} dims`, { file: where(t.file), tensor: e.name });
  const scaled = weightOfBlockScale(e.name);
  const weight = e.dtype === "F8_E4M3" ? t : scaled !== null && e.dtype === "F8_E8M0" ? locate(ckpt, scaled) : undefined;
  if (weight?.entry.dtype === "F8_E4M3") {
    const w = weight.entry;
    const wSize = w.shape[dim]!;
    if (wSize % mp !== 0 || (wSize / mp) % FP8_BLOCK !== 0) {
      throw new DeepcastError(
        `cannot split FP8 weight ${demoNameV4(w.name)?.name ?? w.name} ${JSON.stringify(w.shape)} into ${mp} ranks along dim ${dim}: ` +
          (wSize % mp !== 0 ? `${wSize} is not divisible by ${mp}` : `each rank would get ${wSize / mp}, not a multiple of the ${FP8_BLOCK}-wide scale blocks, so a block would straddle ranks`),
        { file: where(weight.file), tensor: w.name });
    }
  }
  const size = e.shape[dim]!;
  if (size % mp !== 0) throw new DeepcastError(`cannot split ${name} ${JSON.stringify(e.shape)} into ${mp} ranks along dim ${dim}: dim ${dim} has ${size}, not divisible by ${mp}`, { file: where(t.file), tensor: e.name });
}

export function planToDemoV4(ckpt: Checkpoint, opts: DemoPlanV4Options): DemoPlan {
  const f = demoNamesV4Format();
  const where = (file: string) => `${ckpt.source.description}/${file}`;
  const { config, cfgFile, mp, nExperts, nLocal } = checkDemoParallel(ckpt, opts);
  const expertDtype = opts.expertDtype ?? "fp4";
  // The demo's grouped output projection keeps o_groups / world_size groups per rank.
  const oGroups = config.o_groups;
  if (num(oGroups) && oGroups % mp !== 0) {
    throw new DeepcastError(`cannot split ${oGroups} output groups over ${mp} ranks: o_groups must be divisible by --model-parallel (the demo gives each rank o_groups / N of them)`, { file: cfgFile });
  }

  const inputs: DemoInput[] = [];
  let skippedMtp = 0;
  let droppedScales = 0;
  let fp8Dequantized = 0;
  let fp4CastToFp8 = 0;
  let fp4Experts = 0;
  let inputBytes = 0;
  // Scales consumed by their weight's conversion: wo_a's (dequantized) and, with fp8 experts, none (each becomes the cast's tile scale).
  const consumed = new Set<string>();
  const isDequantized = (hfName: string, dtype: Dtype) => dtype === "F8_E4M3" && (demoNameV4(hfName)?.name.endsWith(f.dequantize) ?? false);
  for (const [file, header] of ckpt.shards.map((s) => [s, ckpt.headers.get(s)!] as const)) {
    for (const entry of header.tensors) {
      if (isDequantized(entry.name, entry.dtype)) consumed.add(scaleOf(ckpt, { file, entry }, "fp8-e8m0", where).entry.name);
    }
  }
  for (const [shardIndex, file] of ckpt.shards.entries()) {
    const header = ckpt.headers.get(file)!;
    for (const entry of header.tensors) {
      const hfName = entry.name;
      const renamed = demoNameV4(hfName);
      if (renamed === null) {
        skippedMtp++;
        continue;
      }
      if (consumed.has(hfName)) {
        droppedScales++;
        continue;
      }
      const { name, split } = renamed;
      const from: TensorLocation = { file, entry };
      let op: DemoInput["op"] = "copy";
      let dtype: Dtype = entry.dtype;
      let shape = entry.shape;
      let scale: TensorLocation | undefined;
      let scaleKind: DemoInput["scaleKind"];
      let fp4Weight: DemoInput["fp4Weight"];
      if (entry.dtype === "F8_E5M2") {
        throw new DeepcastError("F8_E5M2 weights are not supported (DeepSeek checkpoints use F8_E4M3)", { file: where(file), tensor: hfName });
      }
      if (entry.dtype === "F8_E4M3") {
        scale = scaleOf(ckpt, from, "fp8-e8m0", where);
        if (isDequantized(hfName, entry.dtype)) {
          op = "fp8";
          scaleKind = "e8m0";
          dtype = "BF16";
          fp8Dequantized++;
        }
      } else if (entry.dtype === "I8" && name.includes(f.expertsSubstring)) {
        // convert.py: `"experts" in name and dtype == torch.int8`, after the split.
        const [rows, packed] = entry.shape as [number, number];
        shape = [rows, packed * 2];
        fp4Experts++;
        if (expertDtype === "fp8") {
          op = "fp4-fp8";
          scale = scaleOf(ckpt, from, "fp4-e8m0", where);
          dtype = f.expertDtypes.fp8;
          fp4CastToFp8++;
        } else {
          dtype = f.expertDtypes.fp4;
        }
      } else if (expertDtype === "fp8" && entry.dtype === "F8_E8M0") {
        // The scale of a packed FP4 expert becomes the cast's 128x128 tile scale.
        const w = weightOfBlockScale(hfName);
        const wl = w !== null ? locate(ckpt, w) : undefined;
        const owner = wl ? blockScaleOf(ckpt, w!) : undefined;
        if (wl && owner?.rule.kind === "fp4-e8m0" && owner.loc.entry.name === hfName && (demoNameV4(w!)?.name.includes(f.expertsSubstring) ?? false)) {
          const rows = wl.entry.shape[0]!;
          const cols = wl.entry.shape[1]! * 2;
          op = "fp4-fp8-scale";
          fp4Weight = { rows, cols };
          shape = [Math.ceil(rows / FP8_BLOCK), Math.ceil(cols / FP8_BLOCK)];
        }
      }
      const place = placeTensor(name, hfName, split, { mp, nExperts, nLocal, file: where(file) }, () => checkSplitV4(ckpt, from, name, split!, mp, where));
      inputBytes += entry.end - entry.begin + (op === "fp8" ? scale!.entry.end - scale!.entry.begin : 0);
      inputs.push({ hfName, name, from, shardIndex, op, scale, scaleKind, fp4Weight, dtype, shape, place });
    }
  }
  if (expertDtype === "fp8" && fp4CastToFp8 === 0) {
    throw new DeepcastError("--expert-dtype fp8 casts packed FP4 routed experts to FP8, but this checkpoint has none", { file: ckpt.source.description, code: "USAGE" });
  }

  const ranks = layoutRanks(inputs, mp);
  const modelArgs = demoModelArgsV4(config, { expertsFp4: expertDtype === "fp4" && fp4Experts > 0, maxSeqLen: opts.maxSeqLen, file: cfgFile });
  const present = new Set(ckpt.files.map((x) => x.name));
  return {
    mp,
    nExperts,
    dtype: "keep",
    expertDtype,
    inputs,
    ranks,
    modelArgs,
    copyFiles: f.copyFiles.filter((n) => present.has(n)),
    skippedMtp,
    droppedScales,
    fp8Dequantized,
    fp4CastToFp8,
    inputBytes,
    outputBytes: ranks.reduce((a, r) => a + r.bytes, 0),
  };
}
