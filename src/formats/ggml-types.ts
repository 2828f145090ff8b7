/**
 * The ggml tensor type table (formats/ggml-types.json; this module is its only reader). Everything
 * that needs a type's id, block, row size, imatrix use or shape fallback asks here: the GGUF writer
 * and reader, the quant mix planner, the quantizers and the forward pass.
 */
import { DeepcastError } from "../errors.js";
import { readFormat } from "./load.js";

/** How ggml's quantizer treats an importance matrix for a type. */
export type ImatrixNeed =
  /** llama-quantize refuses to write the type without one (tensor_requires_imatrix). */
  | "required"
  /** quant_weights changes the bytes. */
  | "used"
  /** ggml never reads it. */
  | "ignored";

export interface GgmlType {
  /** Upper-case name as llama.cpp prints it ("Q4_K", "BF16"); lookups are case-insensitive. */
  readonly name: string;
  /** ggml_type_name() ("q4_K", "bf16"). */
  readonly ggmlName: string;
  /** enum ggml_type. */
  readonly id: number;
  /** Elements per block. */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
  /** ggml_is_quantized (a block of more than one element). */
  readonly quantized: boolean;
  /** 256-element K-quant super-block type (Q2_K..Q6_K). */
  readonly kQuant: boolean;
  readonly imatrix: ImatrixNeed;
  /**
   * llama-quantize's tensor_type_fallback target when a row does not divide the block, or null
   * (a block of 32 or less stays as it is; a larger one has no fallback).
   */
  readonly fallback: string | null;
  /** deepcast quantizes and dequantizes it byte-identically to ggml. */
  readonly quantizer: boolean;
  /** deepcast dequantizes it bit-identically to ggml (every quantizer type, and MXFP4). */
  readonly dequantizer: boolean;
}

/** A type given by name, id, or as itself. */
export type GgmlTypeRef = string | number | GgmlType;

interface TableJson {
  types: (Omit<GgmlType, "quantized" | "dequantizer"> & { dequantizer?: boolean })[];
}

let all: readonly GgmlType[] | undefined;
let byName: Map<string, GgmlType>;
let byId: Map<number, GgmlType>;

/** Every ggml type, in id order. */
export function ggmlTypes(): readonly GgmlType[] {
  if (!all) {
    const json = readFormat<TableJson>("ggml-types.json");
    all = Object.freeze(json.types.map((t) => Object.freeze({ ...t, quantized: t.blockSize > 1, dequantizer: t.quantizer || t.dequantizer === true })));
    byName = new Map(all.map((t) => [t.name.toLowerCase(), t]));
    byId = new Map(all.map((t) => [t.id, t]));
  }
  return all;
}

let quantTypes: readonly GgmlType[] | undefined;

/** The types deepcast quantizes and dequantizes. */
export function ggmlQuantTypes(): readonly GgmlType[] {
  quantTypes ??= Object.freeze(ggmlTypes().filter((t) => t.quantizer));
  return quantTypes;
}

function find(t: string | number): GgmlType | undefined {
  ggmlTypes();
  return typeof t === "number" ? byId.get(t) : byName.get(t.toLowerCase());
}

/** Looks up any ggml type by name (case-insensitive) or id; throws a DeepcastError when unknown. */
export function ggmlType(t: GgmlTypeRef): GgmlType {
  if (typeof t === "object") return t;
  const found = find(t);
  if (!found) throw new DeepcastError(`unknown ggml type ${JSON.stringify(t)}`);
  return found;
}

/** Looks up a type deepcast quantizes; throws a DeepcastError for an unknown or unsupported one. */
export function ggmlQuantType(t: GgmlTypeRef): GgmlType {
  const found = typeof t === "object" ? t : find(t);
  if (!found?.quantizer) {
    throw new DeepcastError(
      `ggml type ${JSON.stringify(typeof t === "object" ? t.name : t)} is not supported for quantization (supported: ${ggmlQuantTypes().map((x) => x.name).join(", ")})`,
    );
  }
  return found;
}

let dequantTypes: readonly GgmlType[] | undefined;

/** The types deepcast dequantizes (what a GGUF's tensors may be for the forward pass). */
export function ggmlDequantTypes(): readonly GgmlType[] {
  dequantTypes ??= Object.freeze(ggmlTypes().filter((t) => t.dequantizer));
  return dequantTypes;
}

/** Looks up a type deepcast dequantizes; throws a DeepcastError for an unknown or unsupported one. */
export function ggmlDequantType(t: GgmlTypeRef): GgmlType {
  const found = typeof t === "object" ? t : find(t);
  if (!found?.dequantizer) {
    throw new DeepcastError(
      `ggml type ${JSON.stringify(typeof t === "object" ? t.name : t)} is not supported for dequantization (supported: ${ggmlDequantTypes().map((x) => x.name).join(", ")})`,
    );
  }
  return found;
}

/** ggml_n_dims: number of dimensions up to the last one that is not 1 (at least 1). */
export function ggmlNDims(ne: readonly number[]): number {
  for (let i = ne.length - 1; i >= 1; i--) if (ne[i] !== 1) return i + 1;
  return 1;
}

/** ggml_row_size: bytes of one row of `n` values; n must be a positive multiple of the block size. */
export function rowBytes(type: GgmlTypeRef, n: number): number {
  const t = ggmlType(type);
  if (!Number.isSafeInteger(n) || n <= 0 || n % t.blockSize !== 0) {
    throw new DeepcastError(`row length ${n} is not a positive multiple of the ${t.name} block size ${t.blockSize}`);
  }
  return (n / t.blockSize) * t.typeSize;
}

/** ggml_nbytes for a contiguous tensor: (ne0 / block) * type_size * ne1 * ne2 * ... */
export function ggmlNbytes(type: GgmlTypeRef, ne: readonly number[], name = ""): number {
  const t = ggmlType(type);
  const ne0 = ne[0] ?? 1;
  if (ne0 % t.blockSize !== 0) {
    throw new DeepcastError(`row length ${ne0} is not a multiple of the ${t.name} block size ${t.blockSize}`, { tensor: name || undefined });
  }
  let n = (ne0 / t.blockSize) * t.typeSize;
  for (let i = 1; i < ne.length; i++) n *= ne[i]!;
  return n;
}
