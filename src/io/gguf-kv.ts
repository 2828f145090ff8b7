/**
 * GGUF metadata values: the `gguf_type` tags, typed KV constructors, ggml's and gguf-py's ways of
 * setting a key, and the little-endian encoding of a KV as ggml's gguf.cpp writes it.
 */
import { DeepcastError } from "../errors.js";


/** `enum gguf_type`. */
export const GgufType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

export type GgufValueType = keyof typeof GgufType;
export type GgufScalarType = Exclude<GgufValueType, "ARRAY">;
export type GgufScalar = number | bigint | boolean | string;

export type GgufKV =
  | { key: string; type: GgufScalarType; value: GgufScalar }
  | { key: string; type: "ARRAY"; elementType: GgufScalarType; value: readonly GgufScalar[] };

/** Constructors for KVs with an explicit GGUF value type. */
export const kv = {
  u8: (key: string, value: number): GgufKV => ({ key, type: "UINT8", value }),
  i8: (key: string, value: number): GgufKV => ({ key, type: "INT8", value }),
  u16: (key: string, value: number): GgufKV => ({ key, type: "UINT16", value }),
  i16: (key: string, value: number): GgufKV => ({ key, type: "INT16", value }),
  u32: (key: string, value: number): GgufKV => ({ key, type: "UINT32", value }),
  i32: (key: string, value: number): GgufKV => ({ key, type: "INT32", value }),
  u64: (key: string, value: number | bigint): GgufKV => ({ key, type: "UINT64", value }),
  i64: (key: string, value: number | bigint): GgufKV => ({ key, type: "INT64", value }),
  f32: (key: string, value: number): GgufKV => ({ key, type: "FLOAT32", value }),
  f64: (key: string, value: number): GgufKV => ({ key, type: "FLOAT64", value }),
  bool: (key: string, value: boolean): GgufKV => ({ key, type: "BOOL", value }),
  str: (key: string, value: string): GgufKV => ({ key, type: "STRING", value }),
  arr: (key: string, elementType: GgufScalarType, value: readonly GgufScalar[]): GgufKV => ({ key, type: "ARRAY", elementType, value }),
};

/** Sets `key` the way ggml's `gguf_set_val_*` does: an existing entry is removed, the new one appended. */
export function setKvLast(kvs: GgufKV[], entry: GgufKV): void {
  const i = kvs.findIndex((k) => k.key === entry.key);
  if (i >= 0) kvs.splice(i, 1);
  kvs.push(entry);
}

/** Sets `key` the way gguf-py's `add_key_value` does: an existing entry keeps its position. */
export function setKvInPlace(kvs: GgufKV[], entry: GgufKV): void {
  const i = kvs.findIndex((k) => k.key === entry.key);
  if (i >= 0) kvs[i] = entry;
  else kvs.push(entry);
}

/** Growable little-endian byte sink. */
export class ByteSink {
  private buf = Buffer.alloc(4096);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = Buffer.alloc(cap);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  u8(v: number): void { this.reserve(1); this.buf.writeUInt8(v, this.length); this.length += 1; }
  i8(v: number): void { this.reserve(1); this.buf.writeInt8(v, this.length); this.length += 1; }
  u16(v: number): void { this.reserve(2); this.buf.writeUInt16LE(v, this.length); this.length += 2; }
  i16(v: number): void { this.reserve(2); this.buf.writeInt16LE(v, this.length); this.length += 2; }
  u32(v: number): void { this.reserve(4); this.buf.writeUInt32LE(v, this.length); this.length += 4; }
  i32(v: number): void { this.reserve(4); this.buf.writeInt32LE(v, this.length); this.length += 4; }
  u64(v: number | bigint): void { this.reserve(8); this.buf.writeBigUInt64LE(BigInt(v), this.length); this.length += 8; }
  i64(v: number | bigint): void { this.reserve(8); this.buf.writeBigInt64LE(BigInt(v), this.length); this.length += 8; }
  f32(v: number): void { this.reserve(4); this.buf.writeFloatLE(v, this.length); this.length += 4; }
  f64(v: number): void { this.reserve(8); this.buf.writeDoubleLE(v, this.length); this.length += 8; }
  bytes(b: Uint8Array): void { this.reserve(b.length); this.buf.set(b, this.length); this.length += b.length; }
  str(s: string): void {
    const b = Buffer.from(s, "utf8");
    this.u64(b.length);
    this.bytes(b);
  }
  zeros(n: number): void { this.reserve(n); this.buf.fill(0, this.length, this.length + n); this.length += n; }

  toBuffer(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function badValue(key: string, type: string, value: unknown): DeepcastError {
  return new DeepcastError(`GGUF metadata ${key}: ${JSON.stringify(typeof value === "bigint" ? String(value) : value)} is not a valid ${type}`);
}

function checkInt(key: string, type: string, v: GgufScalar, lo: number, hi: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) throw badValue(key, type, v);
  return v;
}

function checkBig(key: string, type: string, v: GgufScalar, lo: bigint, hi: bigint): bigint {
  if (typeof v !== "bigint" && !(typeof v === "number" && Number.isSafeInteger(v))) throw badValue(key, type, v);
  const b = BigInt(v);
  if (b < lo || b > hi) throw badValue(key, type, v);
  return b;
}

function writeScalar(sink: ByteSink, key: string, type: GgufScalarType, v: GgufScalar): void {
  switch (type) {
    case "UINT8": sink.u8(checkInt(key, type, v, 0, 0xff)); break;
    case "INT8": sink.i8(checkInt(key, type, v, -0x80, 0x7f)); break;
    case "UINT16": sink.u16(checkInt(key, type, v, 0, 0xffff)); break;
    case "INT16": sink.i16(checkInt(key, type, v, -0x8000, 0x7fff)); break;
    case "UINT32": sink.u32(checkInt(key, type, v, 0, 0xffffffff)); break;
    case "INT32": sink.i32(checkInt(key, type, v, -0x80000000, 0x7fffffff)); break;
    case "UINT64": sink.u64(checkBig(key, type, v, 0n, 0xffffffffffffffffn)); break;
    case "INT64": sink.i64(checkBig(key, type, v, -0x8000000000000000n, 0x7fffffffffffffffn)); break;
    case "FLOAT32":
      if (typeof v !== "number") throw badValue(key, type, v);
      sink.f32(v);
      break;
    case "FLOAT64":
      if (typeof v !== "number") throw badValue(key, type, v);
      sink.f64(v);
      break;
    case "BOOL":
      if (typeof v !== "boolean") throw badValue(key, type, v);
      sink.u8(v ? 1 : 0);
      break;
    case "STRING":
      if (typeof v !== "string") throw badValue(key, type, v);
      sink.str(v);
      break;
    default:
      throw badValue(key, String(type), v);
  }
}

export function writeKv(sink: ByteSink, entry: GgufKV): void {
  sink.str(entry.key);
  sink.u32(GgufType[entry.type]);
  writeValuePayload(sink, entry);
}

function writeValuePayload(sink: ByteSink, entry: GgufKV): void {
  if (entry.type === "ARRAY") {
    const et = entry.elementType as GgufValueType;
    if (et === "ARRAY") throw new DeepcastError(`GGUF metadata ${entry.key}: arrays of arrays are not supported`);
    sink.u32(GgufType[entry.elementType]);
    sink.u64(entry.value.length);
    for (const v of entry.value) writeScalar(sink, entry.key, entry.elementType, v);
  } else {
    writeScalar(sink, entry.key, entry.type, entry.value);
  }
}

/** Bytes of one KV pair as stored: key string, u32 value type, value. */
export function encodeKv(entry: GgufKV): Buffer {
  const sink = new ByteSink();
  writeKv(sink, entry);
  return Buffer.from(sink.toBuffer());
}

/**
 * Bytes of a value as stored after its type tag. For an array: the array's element payload after the
 * u64 count (the bytes the golden listings hash), i.e. without element type and count.
 */
export function encodeValueData(entry: GgufKV): Buffer {
  const sink = new ByteSink();
  if (entry.type === "ARRAY") {
    for (const v of entry.value) writeScalar(sink, entry.key, entry.elementType, v);
  } else {
    writeScalar(sink, entry.key, entry.type, entry.value);
  }
  return Buffer.from(sink.toBuffer());
}

/** The shortest decimal that rounds to the same float32 (a float32 metadata value as it was written). */
export function f32Decimal(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const f = Math.fround(x);
  for (let p = 1; p <= 9; p++) {
    const d = Number(f.toPrecision(p));
    if (Math.fround(d) === f) return d;
  }
  return f;
}
