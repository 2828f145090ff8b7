/**
 * MXFP4 (the GGUF type of DeepSeek-V4's routed experts) is dequantized bit-identically to ggml:
 * against ggml's own to_float output (fixtures/ggml-mxfp4, written by libggml-base of llama.cpp
 * v0.4.0) and against an independent decode of the block definition written here.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

import { ggmlDequantTypes, ggmlType, rowBytes } from "../src/formats/ggml-types.js";
import { FP4_VALUES } from "../src/formats/fp4.js";
import { dequantize, quantize } from "../src/quant/ggml.js";
import { loadNative } from "../src/quant/native.js";
import { lacking, ROOT, sha256 } from "./helpers.js";

const DIR = join(ROOT, "fixtures", "ggml-mxfp4");
const blocks = readFileSync(join(DIR, "blocks.bin"));
const golden = readFileSync(join(DIR, "dequant.f32"));
const noNative = lacking(loadNative() !== null, "the native addon did not load, so MXFP4 cannot be dequantized");

describe("MXFP4", () => {
  it("is in the one type table as ggml defines it, dequantized but never quantized", () => {
    const t = ggmlType("MXFP4");
    expect([t.id, t.blockSize, t.typeSize, t.ggmlName]).toEqual([39, 32, 17, "mxfp4"]);
    expect(t.dequantizer && !t.quantizer).toBe(true);
    expect(ggmlDequantTypes().map((x) => x.name)).toContain("MXFP4");
    expect(rowBytes(t, 4096)).toBe(128 * 17);
    expect(() => quantize("MXFP4", new Float32Array(32), 32)).toThrow(/not supported for quantization/);
  });

  it("the golden vectors are intact", () => {
    expect(sha256(blocks)).toBe("e3048c0bcb7727a1ad98a30eadc4f5ef6896efe4a06c9618d421cd8dcec3b802");
    expect(sha256(golden)).toBe("aa38aa80390fd9925a92c48c92276682ec0c34efca5d17605c6b351376d7aeba");
  });

  it.skipIf(noNative)("dequantizes to ggml's exact float32 bits (all 256 scale bytes, all 256 nibble pairs)", () => {
    const rows = 384 / 8;
    const out = new Float32Array(rows * 256);
    const got = dequantize("MXFP4", new Uint8Array(blocks), 256, { threads: 2 });
    out.set(got);
    expect(Buffer.from(out.buffer).equals(golden)).toBe(true);
  });

  it.skipIf(noNative)("equals e2m1 x 2^(e-127) decoded independently (code 8 is +0; e = 255 as ggml: its half scale is 2^127, so e2m1 x 2^128)", () => {
    const got = new Uint32Array(dequantize("MXFP4", new Uint8Array(blocks), 32).buffer);
    const want = new Float32Array(got.length);
    for (let b = 0; b < blocks.length / 17; b++) {
      const e = blocks[b * 17]!;
      const scale = e === 255 ? 2 ** 128 : 2 ** (e - 127);
      for (let j = 0; j < 16; j++) {
        const q = blocks[b * 17 + 1 + j]!;
        want[b * 32 + j] = FP4_VALUES[q & 15]! * scale;
        want[b * 32 + 16 + j] = FP4_VALUES[q >> 4]! * scale;
      }
    }
    expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    // +0 for code 8, never -0.
    expect(got.every((bits) => bits !== 0x80000000)).toBe(true);
  });
});
