/**
 * The package as a library: `import { quantize, dequantize, ... } from "deepcast"` resolves through
 * package.json's exports (a real Node process importing the package by its name), with declarations,
 * and the kernels give ggml's golden bytes under llama.cpp's type names.
 */
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { ROOT } from "./helpers.js";

const run = promisify(execFile);

describe("import ... from 'deepcast'", () => {
  it("quantize/dequantize by llama.cpp type name equal ggml's golden bytes and values (Q4_K plain, IQ2_XXS with imatrix)", async () => {
    const script = `
      import { readFileSync } from "node:fs";
      import { createHash } from "node:crypto";
      import { quantize, dequantize, ggmlQuantTypes, VERSION } from "deepcast";
      const sha = (b) => createHash("sha256").update(b).digest("hex");
      const f32 = (p) => { const b = readFileSync(p); return new Float32Array(b.buffer, b.byteOffset, b.length / 4); };
      const out = { version: VERSION, types: ggmlQuantTypes().map((t) => t.name), cases: [] };
      for (const [dir, id] of [["ggml-quants", "q4_K/gaussian-512/plain"], ["ggml-quants-iq", "iq2_xxs/gaussian-512/imatrix"]]) {
        const m = JSON.parse(readFileSync("fixtures/" + dir + "/manifest.json", "utf8"));
        const c = m.cases.find((x) => x.id === id);
        const x = f32("fixtures/ggml-quants/" + c.files.input);
        const opts = c.imatrix ? { imatrix: f32("fixtures/ggml-quants/" + c.files.imatrix) } : {};
        const q = quantize(c.type_upper, x, c.n_per_row, opts);
        const d = dequantize(c.type, q, c.n_per_row);
        out.cases.push({ id, bytes: sha(q) === sha(readFileSync("fixtures/" + dir + "/" + c.files.expected)),
          values: sha(new Uint8Array(d.buffer)) === sha(readFileSync("fixtures/" + dir + "/" + c.files.dequant)) });
      }
      try { quantize("IQ2_XXS", new Float32Array(256), 256); } catch (e) { out.refused = e.code; }
      try { quantize("Q4_K", new Float32Array(300), 256); } catch (e) { out.ragged = e.code; }
      console.log(JSON.stringify(out));
    `;
    const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], { cwd: ROOT });
    const r = JSON.parse(stdout) as { version: string; types: string[]; cases: { id: string; bytes: boolean; values: boolean }[]; refused: string; ragged: string };
    const pkg = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as { version: string };
    expect(r.version).toBe(pkg.version);
    expect(r.types).toEqual(expect.arrayContaining(["Q4_K", "IQ1_S", "IQ2_XXS", "IQ3_S", "IQ4_XS", "TQ2_0", "BF16"]));
    expect(r.cases).toEqual([
      { id: "q4_K/gaussian-512/plain", bytes: true, values: true },
      { id: "iq2_xxs/gaussian-512/imatrix", bytes: true, values: true },
    ]);
    expect(r.refused).toBe("IMATRIX_MISSING");
    expect(r.ragged).toBe("USAGE");
  });

  it("ships TypeScript declarations for the entry point", async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as { types: string; exports: Record<string, { types: string; import: string }> };
    expect(pkg.exports["."]!.types).toBe(pkg.types);
    const dts = await readFile(join(ROOT, pkg.types), "utf8");
    for (const name of ["quantize", "dequantize", "planToGguf", "runToGguf", "runFp8ToBf16", "validate", "DeepcastError"]) expect(dts).toContain(name);
  });
});
