/**
 * IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M against ggml's own bytes: fixtures/ggml-quants-iq holds
 * what ggml_quantize_chunk of llama.cpp v0.4.0 (x86-64 GCC build) writes for 28 inputs, with and
 * (where ggml allows it) without an imatrix, and what its to_float returns for those bytes (see
 * fixtures/ggml-quants-iq/README.md; inputs and imatrices live in fixtures/ggml-quants/).
 * Also the lattice tables the quantizers search, against the ones ggml's iq2xs_init_impl builds.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

import { DeepcastError } from "../src/errors.js";
import { ggmlQuantType } from "../src/formats/ggml-types.js";
import { dequantizeRows, ggmlRequiresImatrix, quantizeRows } from "../src/quant/ggml.js";
import { loadNative } from "../src/quant/native.js";
import { ROOT, sha256 } from "./helpers.js";
import { asBytes, firstBadRow, floatsOf, type GoldenCase as Case, type GoldenIqManifest as Manifest } from "./golden-manifest.js";
import { xorshift32 } from "./numeric.js";

const DIR = join(ROOT, "fixtures", "ggml-quants-iq");
const INPUTS = join(ROOT, "fixtures", "ggml-quants");
const TYPES = ["iq2_xxs", "iq2_xs", "iq2_s", "iq1_s", "iq1_m"];

// In CI a missing addon or missing golden data is a failure, not a reason to skip.
const CI = !!process.env["CI"];
const haveData = existsSync(join(DIR, "manifest.json"));
const native = loadNative();
const hasKernels = native !== null;

describe.runIf(CI)("prerequisites (CI)", () => {
  it("the golden data and the native IQ kernels are present", () => {
    expect(haveData, `${DIR}/manifest.json`).toBe(true);
    expect(hasKernels, "native addon with the IQ kernels (npm run install)").toBe(true);
  });
});

const manifest: Manifest = haveData ? JSON.parse(readFileSync(join(DIR, "manifest.json"), "utf8")) : { ggml_requires_imatrix: [], inputs: [], cases: [] };
const cases = manifest.cases.filter((c) => TYPES.includes(c.type));

const file = (rel: string, base = DIR): Buffer => readFileSync(join(base, rel));
function floats(rel: string, base = INPUTS): Float32Array {
  const b = file(rel, base);
  return floatsOf(b);
}


describe.skipIf(!haveData)("golden fixture (IQ2/IQ1 part)", () => {
  it("has every case of the five types, intact", () => {
    // 28 inputs; imatrix-only where ggml asserts one, else plain and imatrix.
    const want = Object.fromEntries(TYPES.map((t) => [t, manifest.ggml_requires_imatrix.includes(t) ? 28 : 56]));
    const got = Object.fromEntries(TYPES.map((t) => [t, cases.filter((c) => c.type === t).length]));
    expect(got).toEqual(want);
    expect(manifest.ggml_requires_imatrix.filter((t) => TYPES.includes(t)).sort()).toEqual(["iq1_s", "iq2_xs", "iq2_xxs"]);
    for (const c of cases) {
      expect(sha256(file(c.files.input, INPUTS)), c.files.input).toBe(c.sha256.input);
      if (c.files.imatrix) expect(sha256(file(c.files.imatrix, INPUTS)), c.files.imatrix).toBe(c.sha256.imatrix);
      expect(sha256(file(c.files.expected)), c.files.expected).toBe(c.sha256.expected);
      expect(sha256(file(c.files.dequant)), c.files.dequant).toBe(c.sha256.dequant);
    }
  });
});

describe.skipIf(!haveData || !hasKernels).each(TYPES)("%s", (type) => {
  const typeCases = cases.filter((c) => c.type === type);
  const name = type.toUpperCase();
  for (const mode of ["plain", "imatrix"] as const) {
    const modeCases = typeCases.filter((c) => c.imatrix === (mode === "imatrix"));
    if (modeCases.length === 0) continue;

    it(`quantizes ${modeCases.length} ${mode} cases byte for byte`, () => {
      for (const c of modeCases) {
        const im = c.files.imatrix ? floats(c.files.imatrix) : null;
        const got = quantizeRows(name, floats(c.files.input), c.rows, c.n_per_row, im, 1);
        const want = file(c.files.expected);
        expect(got.length, c.id).toBe(c.rows * c.row_bytes);
        if (!Buffer.from(got).equals(want)) expect.fail(`${c.id}: ${firstBadRow(got, want, c.row_bytes)}`);
      }
    });

    it(`dequantizes the ${mode} bytes bit for bit`, () => {
      for (const c of modeCases) {
        const got = dequantizeRows(name, file(c.files.expected), c.rows, c.n_per_row, 1);
        const want = file(c.files.dequant);
        if (!asBytes(got).equals(want)) {
          const g = new Uint32Array(got.buffer), w = new Uint32Array(want.buffer.slice(want.byteOffset, want.byteOffset + want.byteLength));
          const i = g.findIndex((v, k) => v !== w[k]);
          expect.fail(`${c.id}: value ${i}: got 0x${g[i]!.toString(16)}, want 0x${w[i]!.toString(16)}`);
        }
      }
    });
  }

  it("gives the same bytes and values on 1 and 3 threads", () => {
    // All 512-wide inputs stacked (~190 rows), each 2048-wide one too: every thread gets rows.
    for (const width of [512, 2048]) {
      const inputs = manifest.inputs.filter((i) => i.n_per_row === width);
      const rows = inputs.reduce((s, i) => s + i.rows, 0);
      const x = new Float32Array(rows * width);
      let off = 0;
      for (const i of inputs) {
        x.set(floats(i.file), off);
        off += i.rows * width;
      }
      const im = floats(inputs[1]!.imatrix_file);
      for (const imatrix of ggmlRequiresImatrix(name) ? [im] : [null, im]) {
        const one = quantizeRows(name, x, rows, width, imatrix, 1);
        const three = quantizeRows(name, x, rows, width, imatrix, 3);
        if (!Buffer.from(three).equals(one)) expect.fail(`${name} ${width} ${imatrix ? "imatrix" : "plain"}: ${firstBadRow(three, one, one.length / rows)}`);
        expect(asBytes(dequantizeRows(name, one, rows, width, 3)).equals(asBytes(dequantizeRows(name, one, rows, width, 1)))).toBe(true);
      }
    }
  });
});

describe.skipIf(!hasKernels)("imatrix requirement", () => {
  const x = new Float32Array(2 * 256).map((_, i) => Math.sin(i) * 0.02);

  it.each(["IQ2_XXS", "IQ2_XS", "IQ1_S"])("%s without an imatrix is refused with IMATRIX_MISSING", (name) => {
    expect(ggmlRequiresImatrix(name)).toBe(true);
    let err: unknown;
    try {
      quantizeRows(name, x, 2, 256, null);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DeepcastError);
    expect((err as DeepcastError).code).toBe("IMATRIX_MISSING");
    expect((err as DeepcastError).message).toMatch(new RegExp(`^${name} quantization needs an importance matrix`));
    // The addon refuses too (a JS exception, not ggml's abort).
    const t = ggmlQuantType(name);
    expect(() => native!.ggmlQuantize(t.id, x, 2, 256, new Uint8Array(2 * t.typeSize), null, 1)).toThrow(/needs an importance matrix/);
  });

  it.each(["IQ2_S", "IQ1_M"])("%s quantizes without one, as ggml allows", (name) => {
    expect(ggmlRequiresImatrix(name)).toBe(false);
    const q = quantizeRows(name, x, 2, 256, null);
    expect(dequantizeRows(name, q, 2, 256).some((v) => v !== 0)).toBe(true);
  });
});

describe.skipIf(!hasKernels)("non-finite input", () => {
  // ggml aborts (GGML_ASSERT) or reads out of bounds on NaN/inf rows; the port must return bytes.
  it.each(TYPES.map((t) => t.toUpperCase()))("%s quantizes NaN and infinite values without crashing", (name) => {
    const x = new Float32Array(1024).map((_, i) => [NaN, Infinity, 0.01 * Math.sin(i), -Infinity, 3e38][i % 5]!);
    for (const imatrix of [new Float32Array(1024).fill(1), ...(ggmlRequiresImatrix(name) ? [] : [null])]) {
      const q = quantizeRows(name, x, 1, 1024, imatrix);
      expect(q.length).toBe(4 * ggmlQuantType(name).typeSize);
      expect(dequantizeRows(name, q, 1, 1024)).toHaveLength(1024);
    }
  });
});

// The lattice tables iq2xs_init_impl builds: kmap (int32 per slot), neighbour records (uint16) and
// the dequantization codebook (ggml-common.h's iq2xxs_grid / iq2xs_grid / iq2s_grid / iq1s_grid),
// as sha256 of their little-endian bytes. Provenance: a throwaway C harness (outside this repo)
// that compiled ggml's own iq2xs_init_impl and ggml-common.h of llama.cpp v0.4.0 (80fb11a) and
// dumped iq2_data[g].map / .neighbours and the grid tables. The neighbour sha256 prefixes agree
// with shared/specs/llama-cpp-iq.md §1.2 (computed there by independent numpy code).
const LATTICE_SHA256: Record<string, { neighbours: number; kmap: string; neigh: string; codebook: string }> = {
  IQ2_XXS: {
    neighbours: 417400,
    kmap: "709b1f45e8457bc27656b3bc37ea881ffc567fe71540df5aae912097b77e2fd1",
    neigh: "fb8727a3ecbf6124f63c263d0c1b05925d580426a1d732df1d91514b84a21724",
    codebook: "05826b5d3e472a3a78f196be62ac78acf81df0f909626e12ab9fa2a5d490dd54",
  },
  IQ2_XS: {
    neighbours: 551722,
    kmap: "d6b796100158d2c7de48d0a2d5c38efc400471f822f874f631ab71dd47454326",
    neigh: "b94f3f7601b0130674b6e0b7fdccc240b7234d31db4d60601dfc0ff6872a129e",
    codebook: "06e47aaca60b4dc1d9b5a3f34540437058a6b142b4d7a59d5ded769b4d1bf1de",
  },
  IQ2_S: {
    neighbours: 209100,
    kmap: "bdd7645b9d68dcd282605e039b72ed729c4252e518c5d6ffb12282135a8c37c8",
    neigh: "7e06788dce7035c2d4fdc983be81429c26fc3106db8d76a2771b285f9c2eb8ed",
    codebook: "e1aa1473412b0552c2174c30ef22ab4073f6a181b85a17056e8249bd2932fd88",
  },
  IQ1_S: {
    neighbours: 1375339,
    kmap: "732ed77320813d3250cbecd7235db1a2d0a661ee4b54fa2a0b5d1cd4e08c5ef0",
    neigh: "9a5d4a8807610d7ecdb328c531a60a6e10a202801f9290a6ed17daf3b9a4b054",
    codebook: "07540ffc1aeaf6ad4d97e96b0fcc765aae39671d4ae4a27bbd0e796fde167c6a",
  },
};
const LATTICE = { IQ2_XXS: { id: 16, size: 256, nwant: 2 }, IQ2_XS: { id: 17, size: 512, nwant: 2 }, IQ2_S: { id: 22, size: 1024, nwant: 1 }, IQ1_S: { id: 19, size: 2048, nwant: 3 } };

const lattice = (id: number) => native!.ggmlIqLattice(id);

describe.skipIf(!hasKernels)("lattice tables", () => {
  it.each(Object.keys(LATTICE_SHA256))("%s: kmap, neighbour lists and codebook equal ggml's", (name) => {
    const want = LATTICE_SHA256[name]!;
    const t = lattice(LATTICE[name as keyof typeof LATTICE].id);
    expect(t.kmap.length).toBe(43692 * 4);
    expect(t.neighbours.length).toBe(want.neighbours * 2);
    expect({ kmap: sha256(t.kmap), neigh: sha256(t.neighbours), codebook: sha256(t.codebook) }).toEqual({ kmap: want.kmap, neigh: want.neigh, codebook: want.codebook });
  });

  it("IQ1_M shares IQ1_S's lattice", () => {
    expect(Buffer.from(lattice(29).neighbours).equals(Buffer.from(lattice(19).neighbours))).toBe(true);
  });

  // Independent of the checksums: recompute sampled records by brute force (sort by distance, then
  // index; keep the nwant nearest distinct distances) from the lattice points the codebook encodes.
  it.each(Object.keys(LATTICE))("%s: sampled neighbour records match a brute-force search", (name) => {
    const { id, size, nwant } = LATTICE[name as keyof typeof LATTICE];
    const t = lattice(id);
    const kmap = new Int32Array(t.kmap.buffer, t.kmap.byteOffset, 43692);
    const nb = new Uint16Array(t.neighbours.buffer, t.neighbours.byteOffset, t.neighbours.length / 2);
    // Levels of entry j from its codebook bytes (IQ2: 8/25/43; IQ1: -1/0/+1 as int8).
    const level = (b: number) => (id === 19 ? [255, 0, 1].indexOf(b) : [8, 25, 43].indexOf(b));
    const pts: number[][] = [];
    for (let j = 0; j < size; j++) {
      const p = Array.from(t.codebook.subarray(8 * j, 8 * j + 8), (b) => 2 * level(b) + 1);
      expect(p.includes(-1)).toBe(false);
      pts.push(p);
      expect(kmap[p.reduce((u, c, k) => u | (((c - 1) / 2) << (2 * k)), 0)]).toBe(j);
    }
    let checked = 0;
    for (let u = 7; u < 43692; u += 97) {
      if (kmap[u]! >= 0) continue;
      const pos = Array.from({ length: 8 }, (_, k) => 2 * ((u >> (2 * k)) & 3) + 1);
      const d = pts.map((p, j) => [p.reduce((s, c, k) => s + (c - pos[k]!) ** 2, 0), j] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      const distinct = [...new Set(d.map((e) => e[0]))].slice(0, nwant);
      const want = d.filter((e) => distinct.includes(e[0])).map((e) => e[1]);
      const off = -kmap[u]! - 1;
      expect(Array.from(nb.subarray(off + 1, off + 1 + nb[off]!)), `slot ${u}`).toEqual(want);
      checked++;
    }
    expect(checked).toBeGreaterThan(100);
  });
});

// With AVX2, all five types search the neighbour lists 8 entries at a time, and IQ1_S/IQ1_M also
// sort each block and IQ1_S searches its boundary pairs in AVX2 lanes (a block with a NaN sorts on
// the scalar path); the scalar level must give the same bytes, and both must be ggml's.
const canCompareSimd = hasKernels && native!.hasAvx2();
describe.runIf(canCompareSimd)("IQ2/IQ1 scalar and AVX2", () => {
  const atLevel = <T>(level: "scalar" | "avx2", f: () => T): T => {
    expect(native!.setSimd(level)).toBe(true);
    try {
      return f();
    } finally {
      native!.setSimd("auto");
    }
  };

  it("both levels reproduce every golden case", () => {
    for (const level of ["scalar", "avx2"] as const) {
      atLevel(level, () => {
        for (const c of cases) {
          const im = c.files.imatrix ? floats(c.files.imatrix) : null;
          const got = quantizeRows(c.type.toUpperCase(), floats(c.files.input), c.rows, c.n_per_row, im, 1);
          const want = file(c.files.expected);
          if (!Buffer.from(got).equals(want)) expect.fail(`${c.id} (${level}): ${firstBadRow(got, want, c.row_bytes)}`);
        }
      });
    }
  });

  it("both levels give identical bytes on rows with ties, zeros, spikes, NaN and infinities", () => {
    const r = xorshift32(0x2545f491);
    const gauss = () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
    const rows = 96, n = 2048;
    const x = new Float32Array(rows * n);
    // Blocks of 16 from different families, so 32-value blocks mix them.
    for (let seg = 0; seg < x.length; seg += 16) {
      const kind = Math.floor(r() * 10);
      const scale = 10 ** (r() * 8 - 6);
      for (let i = seg; i < seg + 16; i++) {
        switch (kind) {
          case 0: x[i] = 0; break;
          case 1: x[i] = scale; break; // all equal: ties everywhere in the sort
          case 2: x[i] = Math.round(gauss() * 2) * scale; break; // few distinct values
          case 3: x[i] = i === seg + 3 ? scale * 1e3 : gauss() * scale; break; // a spike
          case 4: x[i] = r() < 0.1 ? [NaN, Infinity, -Infinity][Math.floor(r() * 3)]! : gauss() * scale; break;
          case 5: x[i] = r() < 0.5 ? -0 : 0; break;
          default: x[i] = gauss() * scale * (r() < 0.05 ? 20 : 1); // heavy tail
        }
      }
    }
    const im = new Float32Array(n).map(() => (r() < 0.05 ? 0 : Math.exp(4 * r() - 2)));
    for (const name of TYPES.map((t) => t.toUpperCase())) {
      for (const imatrix of ggmlRequiresImatrix(name) ? [im] : [null, im]) {
        const scalar = atLevel("scalar", () => quantizeRows(name, x, rows, n, imatrix, 2));
        const avx2 = atLevel("avx2", () => quantizeRows(name, x, rows, n, imatrix, 2));
        if (!Buffer.from(avx2).equals(scalar)) expect.fail(`${name}${imatrix ? " imatrix" : ""}: ${firstBadRow(avx2, scalar, scalar.length / rows)}`);
      }
    }
  });
});
