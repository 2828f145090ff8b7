/**
 * IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, TQ1_0 and TQ2_0 against ggml's own bytes: fixtures/ggml-quants-iq
 * holds, for 28 inputs, what ggml_quantize_chunk of llama.cpp v0.4.0 (x86-64 GCC build) writes
 * without and with an imatrix, and what its to_float returns (see fixtures/ggml-quants-iq/README.md;
 * inputs and imatrices resolve against fixtures/ggml-quants/).
 *
 * With the CI environment variable set, a missing addon or missing golden data fails instead of
 * skipping.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

import { ggmlQuantType, ggmlQuantTypes, rowBytes } from "../src/formats/ggml-types.js";
import { dequantizeRows, quantizeRows } from "../src/quant/ggml.js";
import { loadNative } from "../src/quant/native.js";
import { ROOT, sha256 } from "./helpers.js";
import { asBytes, firstBadRow, floatsOf, type GoldenCase as Case, type GoldenManifest as Manifest } from "./golden-manifest.js";

const DIR = join(ROOT, "fixtures", "ggml-quants-iq");
const DATA = join(ROOT, "fixtures", "ggml-quants");
const CI = !!process.env["CI"];
const TYPES = ["IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"];
/** Cases per type in the fixture: plain and imatrix for the IQ types, plain only for TQ. */
const CASES_PER_TYPE: Record<string, number> = { IQ3_XXS: 56, IQ3_S: 56, IQ4_NL: 56, IQ4_XS: 56, TQ1_0: 28, TQ2_0: 28 };

const haveGolden = existsSync(join(DIR, "manifest.json"));
const native = loadNative();
const hasKernels = native !== null;
// Without CI a missing addon / golden set skips; with CI it must fail (the tests below run and throw).
const run = (CI || (haveGolden && hasKernels)) as boolean;

const manifest: Manifest = haveGolden
  ? (JSON.parse(readFileSync(join(DIR, "manifest.json"), "utf8")) as Manifest)
  : { types: {}, imatrix_ignored_by: [], inputs: [], cases: [] };
const mine = manifest.cases.filter((c) => TYPES.includes(c.type_upper));

/** Golden outputs live in DIR; inputs and imatrices (files.input / files.imatrix) in DATA. */
const fileCache = new Map<string, Buffer>();
function bytes(path: string): Buffer {
  let b = fileCache.get(path);
  if (!b) {
    b = readFileSync(path);
    fileCache.set(path, b);
  }
  return b;
}
function floats(path: string): Float32Array {
  const b = bytes(path);
  return floatsOf(b);
}
const input = (c: Case) => floats(join(DATA, c.files.input));
const imatrixOf = (c: Case) => (c.files.imatrix ? floats(join(DATA, c.files.imatrix)) : null);


describe.runIf(run)("IQ3/IQ4/TQ golden fixture", () => {
  it("is present, intact (sha256 of every file) and has every case of these types", () => {
    expect(haveGolden, `${DIR}/manifest.json is missing`).toBe(true);
    for (const t of TYPES) expect(mine.filter((c) => c.type_upper === t), t).toHaveLength(CASES_PER_TYPE[t]!);
    for (const c of mine) {
      expect(sha256(bytes(join(DATA, c.files.input))), c.files.input).toBe(c.sha256.input);
      if (c.files.imatrix) expect(sha256(bytes(join(DATA, c.files.imatrix))), c.files.imatrix).toBe(c.sha256.imatrix);
      expect(sha256(bytes(join(DIR, c.files.expected))), c.files.expected).toBe(c.sha256.expected);
      expect(sha256(bytes(join(DIR, c.files.dequant))), c.files.dequant).toBe(c.sha256.dequant);
    }
  });

  it("agrees with the type table (formats/ggml-types.json), which lists these types as quantizable", () => {
    for (const t of TYPES) {
      const folder = t.toLowerCase();
      const want = manifest.types[folder]!;
      const got = ggmlQuantType(t);
      expect(ggmlQuantTypes()).toContain(got);
      expect([got.ggmlName, got.id, got.blockSize, got.typeSize]).toEqual([want.name, want.id, want.block_size, want.type_size]);
      expect(got.imatrix !== "ignored", t).toBe(!manifest.imatrix_ignored_by.includes(folder));
      expect(rowBytes(t, 512)).toBe((512 / want.block_size) * want.type_size);
    }
  });
});

describe.runIf(run)("IQ3 lattices", () => {
  // What ggml's own iq3xs_init_impl builds (run once in a C harness linking llama.cpp v0.4.0's
  // ggml-quants.c): sha256 of the tables as little-endian arrays, and the neighbour list lengths.
  const GGML = {
    256: {
      grid: "52f7c882768382b9a413358f005d57aaf5a70c1d49b152b847fc5dcdd3c10869",
      kmap: "2384bfe6ea71e4257727bfd5ec66d358995a2f0600bd8b6ef16a83559390e751",
      neighbours: "4b54395c1c3e9766e6cbb7f2f84a3ebb43d9ca391bd344e517577c3c3c3fa01a",
      neighbourCount: 22825,
    },
    512: {
      grid: "bd1af4945a1717c65610b0284e4628b9a1ba3b306fae3a06f6e5f597356e349f",
      kmap: "53eb24b689961eea61a0a46257a182ac58fe414a9d52163e67ee4a9fc5322659",
      neighbours: "662208b0d2ce2fa3346c5fb672db4be13bc06f87c78775acfc435550935b5d89",
      neighbourCount: 28317,
    },
  } as const;

  it.each([256, 512] as const)("grid %i: points, kmap and neighbour lists equal ggml's", (size) => {
    expect(hasKernels, "native addon with ggmlIq3Lattice").toBe(true);
    const t = native!.ggmlIq3Lattice(size);
    const want = GGML[size];
    expect(t.grid).toHaveLength(size);
    expect(t.kmap).toHaveLength(4096);
    expect(t.kmap.filter((v) => v >= 0)).toHaveLength(size);
    expect(t.neighbours).toHaveLength(want.neighbourCount);
    const u8 = (a: Uint32Array | Int32Array | Uint16Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    expect(sha256(u8(t.grid))).toBe(want.grid);
    expect(sha256(u8(t.kmap))).toBe(want.kmap);
    expect(sha256(u8(t.neighbours))).toBe(want.neighbours);
  });
});

describe.runIf(run).each(TYPES)("%s", (typeName) => {
  const cases = mine.filter((c) => c.type_upper === typeName);
  for (const mode of ["plain", "imatrix"] as const) {
    const modeCases = cases.filter((c) => c.imatrix === (mode === "imatrix"));
    if (haveGolden && modeCases.length === 0) continue;

    it(`quantizes ${modeCases.length} ${mode} cases byte for byte`, () => {
      expect(hasKernels, "native addon").toBe(true);
      expect(modeCases.length).toBeGreaterThan(0);
      for (const c of modeCases) {
        const got = quantizeRows(typeName, input(c), c.rows, c.n_per_row, imatrixOf(c), 1);
        const want = bytes(join(DIR, c.files.expected));
        expect(got.length, c.id).toBe(c.rows * c.row_bytes);
        if (!Buffer.from(got).equals(want)) expect.fail(`${c.id}: ${firstBadRow(got, want, c.row_bytes)}`);
      }
    });

    it(`dequantizes the ${mode} bytes bit for bit`, () => {
      expect(hasKernels, "native addon").toBe(true);
      for (const c of modeCases) {
        const got = dequantizeRows(typeName, bytes(join(DIR, c.files.expected)), c.rows, c.n_per_row, 1);
        const want = bytes(join(DIR, c.files.dequant));
        if (!asBytes(got).equals(want)) {
          const g = new Uint32Array(got.buffer), w = new Uint32Array(want.buffer.slice(want.byteOffset, want.byteOffset + want.byteLength));
          const i = g.findIndex((v, k) => v !== w[k]);
          expect.fail(`${c.id}: value ${i}: got 0x${g[i]!.toString(16)}, want 0x${w[i]!.toString(16)}`);
        }
      }
    });
  }

  if (typeName.startsWith("TQ")) {
    it("ignores an imatrix, as ggml does: the bytes equal those without one", () => {
      expect(hasKernels, "native addon").toBe(true);
      for (const c of cases) {
        const im = floats(join(DATA, manifest.inputs.find((i) => i.id === c.input_id)!.imatrix_file));
        const got = quantizeRows(typeName, input(c), c.rows, c.n_per_row, im, 1);
        expect(Buffer.from(got).equals(bytes(join(DIR, c.files.expected))), c.id).toBe(true);
      }
    });
  }
});

describe.runIf(run)("IQ3/IQ4/TQ threads", () => {
  it.each(TYPES)("%s: 1 and 3 threads give the same bytes and values", (name) => {
    expect(hasKernels, "native addon").toBe(true);
    // All 512-wide inputs stacked (~190 rows), so every thread gets several rows.
    const inputs = manifest.inputs.filter((i) => i.n_per_row === 512);
    const rows = inputs.reduce((s, i) => s + i.rows, 0);
    const x = new Float32Array(rows * 512);
    let off = 0;
    for (const i of inputs) {
      x.set(floats(join(DATA, i.file)), off);
      off += i.rows * 512;
    }
    const im = floats(join(DATA, inputs[0]!.imatrix_file));
    const t = ggmlQuantType(name);
    for (const imatrix of t.imatrix !== "ignored" ? [null, im] : [null]) {
      const one = quantizeRows(t, x, rows, 512, imatrix, 1);
      const three = quantizeRows(t, x, rows, 512, imatrix, 3);
      if (!Buffer.from(three).equals(one)) expect.fail(`${name}${imatrix ? " imatrix" : ""}: ${firstBadRow(three, one, rowBytes(t, 512))}`);
      const d1 = dequantizeRows(t, one, rows, 512, 1);
      expect(asBytes(dequantizeRows(t, one, rows, 512, 3)).equals(asBytes(d1))).toBe(true);
    }
  });
});

// IQ4_NL/IQ4_XS run their 16 trial scales in AVX2 lanes when the CPU has AVX2; the scalar level
// must give the same bytes, and both must be ggml's.
const canCompareSimd = hasKernels && native!.hasAvx2();
describe.runIf(canCompareSimd)("IQ3/IQ4/TQ scalar and AVX2", () => {
  it.each(TYPES)("%s: both levels reproduce every golden case", (name) => {
    for (const level of ["scalar", "avx2"] as const) {
      expect(native!.setSimd(level)).toBe(true);
      try {
        for (const c of mine.filter((k) => k.type_upper === name)) {
          const got = quantizeRows(name, input(c), c.rows, c.n_per_row, imatrixOf(c), 1);
          const want = bytes(join(DIR, c.files.expected));
          if (!Buffer.from(got).equals(want)) expect.fail(`${c.id} (${level}): ${firstBadRow(got, want, c.row_bytes)}`);
        }
      } finally {
        native!.setSimd("auto");
      }
    }
  });
});
