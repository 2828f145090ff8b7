/**
 * The GGUF file for one output type: the type of every tensor and the file's tensor and KV order.
 * F32/F16/BF16 follow convert_hf_to_gguf --outtype; every other type follows llama.cpp's canonical path,
 * convert --outtype bf16 then llama-quantize (src/quant/mix.ts).
 */
import { DeepcastError } from "../errors.js";
import { Keys } from "../formats/gguf-keys.js";
import { ggmlQuantTypes, ggmlType, type GgmlType } from "../formats/ggml-types.js";
import { kv, setKvLast, type GgufKV } from "../io/gguf-kv.js";
import { parseFtype, planQuantMix, type FtypeInfo, type MixOptions, type MixPlan, type MixTensorOut } from "../quant/mix.js";
import type { GgufModel, GgufTensorSource } from "./gguf-plan.js";

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
  /** general.file_type as written (V4's convert: MOSTLY_MXFP4_MOE whatever --outtype). */
  fileType: number;
  kvs: GgufKV[];
  tensors: GgufOutputTensor[];
  mix?: MixPlan;
}

/** Chooses the type of every tensor and the file's tensor/KV order for one output type. */
export function planGgufOutput(model: GgufModel, opts: GgufOutputOptions): GgufOutputPlan {
  const ftype = parseFtype(opts.ftype);
  const F32 = ggmlType("F32");
  const BF16 = ggmlType("BF16");
  const Q8_0 = ggmlType("Q8_0");
  const float = !ftype.defaultType.quantized;
  const overrides = opts.outputTensorType !== undefined || opts.tokenEmbeddingType !== undefined;
  if (opts.fp8AsQ8 && !float) throw new DeepcastError(`--fp8-as-q8 applies to F32/F16/BF16 outputs, not ${ftype.name}`);
  if (float && !overrides) {
    const kvs = model.kvs.map((e) => (e.key === Keys.General.FILE_TYPE ? kv.u32(Keys.General.FILE_TYPE, model.convertFileType ?? ftype.id) : e));
    const tensors = model.tensors.map((t): GgufOutputTensor => {
      if (t.convertType !== undefined) {
        const fixed = ggmlType(t.convertType);
        return { name: t.name, ne: [...t.ne], type: fixed, inputType: fixed, source: t.source, shape: t.shape, fp8: t.fp8 };
      }
      let type = t.forceF32 ? F32 : ftype.defaultType;
      // gguf-py's Q8_0 needs ne0 % 32 == 0, else it warns and falls back to F16
      if (opts.fp8AsQ8 && t.fp8 && !t.forceF32 && t.shape.length >= 2) type = t.ne[0]! % Q8_0.blockSize === 0 ? Q8_0 : ggmlType("F16");
      return { name: t.name, ne: [...t.ne], type, inputType: t.forceF32 ? F32 : BF16, source: t.source, shape: t.shape, fp8: t.fp8 };
    });
    return { ftype, style: "convert", fileType: model.convertFileType ?? ftype.id, kvs, tensors };
  }
  // llama-quantize's input: convert --outtype bf16 (V4's fixed types stay; quantized ones are requantized)
  const input = model.tensors.map((t) => ({ name: t.name, ne: t.ne, type: t.convertType ?? (t.forceF32 ? F32 : BF16) }));
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
  // a dry run shows plans with types whose kernels have not landed yet (the IQ mixes, --target-size)
  const unsupported = opts.dryRun ? undefined : tensors.find((t) => t.type !== t.inputType && !t.type.quantizer);
  if (unsupported) {
    throw new DeepcastError(
      `deepcast does not quantize to ${unsupported.type.name} (it quantizes ${ggmlQuantTypes().map((t) => t.name).join(", ")})`,
      { tensor: unsupported.name, code: "UNSUPPORTED" });
  }
  const kvs = [...model.kvs];
  setKvLast(kvs, kv.u32(Keys.General.QUANTIZATION_VERSION, 2));
  setKvLast(kvs, kv.u32(Keys.General.FILE_TYPE, ftype.id));
  return { ftype, style: "quantize", fileType: ftype.id, kvs, tensors, mix };
}
