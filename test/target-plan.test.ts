import { spawnSync } from "node:child_process";
import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PlannedGguf } from "../src/convert/planned-gguf.js";
import { planTargetGguf, recipePathOf } from "../src/convert/target-plan.js";
import type { GgufTensorStore } from "../src/io/gguf-reader.js";
import { readOutputRows, sampleRows } from "../src/convert/target-errors.js";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { GgufReader } from "../src/io/gguf-reader.js";
import { ShardReader } from "../src/io/shard-reader.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { parseRecipe } from "../src/quant/recipe.js";
import { FIXTURE, ROOT, tempDir } from "./helpers.js";

const BIN = join(ROOT, "bin", "deepcast.js");
const cli = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env: { ...process.env, HF_HUB_OFFLINE: "1" } });

describe("the error table samples the values to-gguf quantizes", () => {
  it("sampled rows (stacked experts, split kv_b heads, FP8 blocks) equal the rows of to-gguf's BF16 output", async () => {
    const dir = await tempDir();
    const out = join(dir, "bf16.gguf");
    const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype: "BF16" });
    await runToGguf(plan, { kernels: kernels(), threads: 1, force: false });
    const gguf = await GgufReader.open(out);
    const reader = new ShardReader(new LocalSource(FIXTURE));
    let checked = 0;
    try {
      for (const t of plan.output.tensors) {
        if (t.type.name !== "BF16") continue;
        const info = gguf.tensor(t.name)!;
        const ne0 = t.ne[0]!;
        const rows = sampleRows(t.ne, 8, 3, t.source.kind !== "tensor");
        const got = await readOutputRows(reader, { k: kernels(), threads: 1, scales: new Map(), allowNonFinite: false, where: "fixture" }, t, rows);
        for (const [k, r] of rows.entries()) {
          const bytes = new Uint8Array(ne0 * 2);
          await gguf.read(info, r * ne0 * 2, bytes);
          const u16 = new Uint16Array(bytes.buffer);
          const want = Float32Array.from(u16, (h) => new Float32Array(new Uint32Array([h << 16]).buffer)[0]!);
          expect(got.subarray(k * ne0, (k + 1) * ne0), `${t.name} row ${r}`).toEqual(want);
        }
        checked++;
      }
    } finally {
      await reader.close();
      await gguf.close();
    }
    expect(checked).toBeGreaterThan(40);
  });
});

describe("to-gguf --target-size on the fixture", () => {
  it("lands within 3% below the target, and its recipe reproduces the plan through --recipe", async () => {
    const dir = await tempDir();
    const out = join(dir, "t.gguf");
    const src = new LocalSource(FIXTURE);
    const q4km = await planToGguf(src, out, { ftype: "Q4_K_M" });
    const target = q4km.layout.totalBytes;
    const plan = await planTargetGguf(src, out, { target: { bytes: target }, kernels: kernels() });
    const t = plan.target;
    expect(t.achievedBytes).toBe(plan.layout.totalBytes);
    expect(plan.layout.totalBytes).toBeLessThanOrEqual(target);
    expect(plan.layout.totalBytes).toBeGreaterThanOrEqual(target * 0.97);
    expect(t.analyticTensors).toBe(0); // real data: every estimate measured
    // routed experts are read by 4 of 16 tokens: they never get more bits than the shared expert of their layer
    const bits = (name: string) => { const x = t.tensors.find((y) => y.name === name)!; return x.bytes / x.ne.reduce((a, b) => a * b, 1); };
    for (const l of [1, 2, 3]) expect(bits(`blk.${l}.ffn_down_exps.weight`)).toBeLessThanOrEqual(bits(`blk.${l}.ffn_down_shexp.weight`));
    // the recipe gives exactly these types
    const again = await planToGguf(src, out, { ftype: plan.output.ftype.name, tensorTypes: parseRecipe(t.recipe, "recipe") });
    expect(again.output.tensors.map((x) => `${x.name} ${x.type.name}`)).toEqual(plan.output.tensors.map((x) => `${x.name} ${x.type.name}`));
    expect(again.layout.totalBytes).toBe(plan.layout.totalBytes);
  });

  it("with a KLD measurement: every allocation it is asked to score is a model of the right types, and the plan follows the measurement", async () => {
    const dir = await tempDir();
    const out = join(dir, "m.gguf");
    const src = new LocalSource(FIXTURE);
    const target = (await planToGguf(src, out, { ftype: "Q4_K_M" })).layout.totalBytes;
    const estimate = await planTargetGguf(src, out, { target: { bytes: target }, kernels: kernels() });
    // a stand-in measurement that reads the store: output.weight's noise costs 1000x everything else's
    const seen: string[] = [];
    const measureKld = async (store: GgufTensorStore) => {
      let k = 0;
      for (const t of store.tensors) {
        if (!t.type.quantized) continue;
        const bpw = (8 * t.nbytes) / t.ne.reduce((a, b) => a * b, 1);
        k += (t.name === "output.weight" ? 1000 : 1) * 2 ** (-2 * bpw);
      }
      const head = store.tensor("output.weight")!;
      const bytes = new Uint8Array(head.nbytes);
      await store.read(head, 0, bytes); // made on demand, as the forward pass would read it
      seen.push(head.type.name);
      return k;
    };
    const plan = await planTargetGguf(src, out, { target: { bytes: target }, kernels: kernels(), measureKld });
    const m = plan.target.measured!;
    const groups = new Set(plan.target.tensors.filter((x) => !x.fixed).map((x) => x.name.replace(/^blk\.\d+\./, "").replace(/\.weight$/, ""))).size;
    expect(m.measurements).toBe(2 + 2 * groups);
    expect(seen.length).toBe(m.measurements);
    expect(seen[0]).toBe("BF16"); // the floor: every planned tensor at BF16
    expect(plan.layout.totalBytes).toBeLessThanOrEqual(target);
    expect(plan.layout.totalBytes).toBeGreaterThanOrEqual(target * 0.97);
    const typeOf = (p: typeof plan, name: string) => p.target.tensors.find((x) => x.name === name)!;
    expect(typeOf(plan, "output.weight").bytes).toBeGreaterThan(typeOf(estimate, "output.weight").bytes);
    const asEstimated = new PlannedGguf(src, estimate, { kernels: kernels() });
    try {
      expect(m.measuredKld).toBeLessThan(await measureKld(asEstimated.store(new Map())));
    } finally {
      await asEstimated.close();
    }
  });

  it("CLI: writes the file and OUT.recipe.txt; --recipe with it writes the same bytes", async () => {
    const dir = await tempDir();
    const a = join(dir, "a.gguf");
    const r1 = cli("to-gguf", FIXTURE, "-o", a, "--target-size", "6M", "--threads", "1", "--json");
    expect(r1.status, r1.stderr).toBe(0);
    const size = (await stat(a)).size;
    expect(size).toBeLessThanOrEqual(6e6);
    expect(size).toBeGreaterThanOrEqual(6e6 * 0.97);
    const recipe = recipePathOf(a);
    expect(recipe).toBe(join(dir, "a.recipe.txt"));
    const quant = JSON.parse(r1.stdout).quant as string;
    const b = join(dir, "b.gguf");
    const r2 = cli("to-gguf", FIXTURE, "-o", b, "--quant", quant, "--recipe", recipe, "--threads", "1");
    expect(r2.status, r2.stderr).toBe(0);
    expect(Buffer.compare(await readFile(a), await readFile(b))).toBe(0);
  });

  it("CLI: --dry-run prints type, bytes and estimated error per tensor and the totals; bad recipes and targets are usage errors", async () => {
    const dir = await tempDir();
    const r = cli("to-gguf", FIXTURE, "-o", join(dir, "x.gguf"), "--target-bpw", "4.5", "--dry-run");
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^blk\.3\.ffn_down_exps\.weight\s+\[256,256,16\]\s+\w+\s+[\d.]+ KB\s+err \d\.\d{3}e-\d+$/m);
    expect(r.stdout).toMatch(/^target [\d.]+ MB \(tensor data\): planned [\d.]+ MB \(9\d\.\d\d% of the target\)/m);
    const bad = join(dir, "bad.txt");
    await writeFile(bad, "attn_q=q4_K\n# comment\n");
    const r2 = cli("to-gguf", FIXTURE, "-o", join(dir, "y.gguf"), "--quant", "Q4_K_M", "--recipe", bad, "--dry-run");
    expect(r2.status).toBe(2);
    expect(r2.stderr).toMatch(/recipe entry "#".*bad\.txt/);
    const r3 = cli("to-gguf", FIXTURE, "-o", join(dir, "z.gguf"), "--target-size", "1M", "--dry-run");
    expect(r3.status).toBe(2);
    expect(r3.stderr).toMatch(/target is too small/);
    const r4 = cli("to-gguf", FIXTURE, "-o", join(dir, "z.gguf"), "--dry-run");
    expect(r4.status).toBe(2);
    expect(r4.stderr).toMatch(/missing --quant/);
    const r5 = cli("to-gguf", FIXTURE, "-o", join(dir, "z.gguf"), "-q", "Q4_K_M", "--target-measure", bad, "--dry-run");
    expect(r5.status).toBe(2);
    expect(r5.stderr).toMatch(/--target-measure needs --target-size or --target-bpw/);
    const r6 = cli("to-gguf", FIXTURE, "-o", join(dir, "z.gguf"), "--target-size", "6M", "--target-analytic", "--target-measure", bad, "--dry-run");
    expect(r6.status).toBe(2);
    expect(r6.stderr).toMatch(/exclude each other/);
    const r7 = cli("to-gguf", FIXTURE, "-o", join(dir, "z.gguf"), "--target-size", "6M", "--target-measure", join(dir, "missing.txt"), "--dry-run");
    expect(r7.status).toBe(1);
    expect(r7.stderr).toMatch(/cannot read the --target-measure text.*missing\.txt/);
  });
});
