/**
 * `deepcast imatrix` against llama-imatrix v0.4.0 on the fixture (fixtures/llama-cpp-tiny-dsv3-imatrix/
 * fixtures/llama-cpp-tiny-dsv3/tiny-dsv3.imatrix.*: llama-imatrix on llama.cpp's BF16 conversion of tiny-dsv3, the eval text,
 * ctx 256), the writer's bytes, the file round trip, and the errors.
 */
import { spawnSync } from "node:child_process";
import { mkdir, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseImatrix, readImatrix } from "../src/io/imatrix.js";
import { encodeImatrixDat, encodeImatrixGguf, writeImatrix } from "../src/io/imatrix-write.js";
import { planToGguf } from "../src/convert/to-gguf.js";
import { LocalSource } from "../src/io/source.js";
import { logSumExpBlockTs, planImatrixMemory } from "../src/model/imatrix-run.js";
import { loadNative } from "../src/quant/native.js";
import { parseModelConfig } from "../src/model/config.js";
import { compareImatrix } from "./imatrix-compare.js";
import { FIXTURE, GOLDEN, ROOT, tempDir } from "./helpers.js";

const BIN = join(ROOT, "bin", "deepcast.js");
const GOLD = join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3.imatrix");
const TEXT = join(GOLDEN, "eval", "kjv_eval.txt");

function deepcast(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env: { ...process.env, HF_HUB_OFFLINE: "1" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.runIf(loadNative() !== null)("the perplexity's log-sum-exp over vocabulary blocks", () => {
  it("native (rows split over threads) = the TypeScript loop: the same max, sums to 1e-14, NaN carried", () => {
    const [rows, ld, V] = [37, 50, 130];
    let s = 7;
    const logits = Float32Array.from({ length: rows * V }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * 40);
    logits[5 * V + 77] = NaN;
    const run = (fold: (l: Float32Array, r: number, n: number, ld: number, m: Float64Array, x: Float64Array) => void) => {
      const max = new Float64Array(rows).fill(-Infinity);
      const sum = new Float64Array(rows);
      const block = new Float32Array(rows * ld);
      for (let r0 = 0; r0 < V; r0 += ld) {
        const n = Math.min(ld, V - r0);
        for (let i = 0; i < rows; i++) block.set(logits.subarray(i * V + r0, i * V + r0 + n), i * ld);
        fold(block, rows, n, ld, max, sum);
      }
      return { max, sum };
    };
    const ts = run(logSumExpBlockTs);
    const nn = loadNative()!;
    const native = run((l, r, n, ld, m, x) => nn.logSumExpBlock(l, r, n, ld, m, x, 3));
    expect(Number.isNaN(ts.sum[5]!) && Number.isNaN(native.sum[5]!)).toBe(true);
    for (let i = 0; i < rows; i++) {
      if (i === 5) continue;
      expect(native.max[i]).toBe(ts.max[i]);
      expect(Math.abs(native.sum[i]! - ts.sum[i]!) / ts.sum[i]!).toBeLessThan(1e-14);
    }
  });
});

describe("imatrix writer", () => {
  it("writes llama-imatrix's GGUF and .dat files byte for byte from its statistics", async () => {
    const gguf = await readFile(`${GOLD}.gguf`);
    const im = parseImatrix(gguf, "text.txt");
    const data = {
      entries: im.raw!,
      datasets: im.datasets, chunkCount: im.chunkCount, chunkSize: im.chunkSize,
    };
    expect(im.datasets).toEqual(["text.txt"]);
    expect(encodeImatrixGguf(data).equals(gguf)).toBe(true);
    expect(encodeImatrixDat(data).equals(await readFile(`${GOLD}.dat`))).toBe(true);
  });
});

describe("deepcast imatrix on the FP8 fixture vs llama-imatrix on llama.cpp's BF16 GGUF", () => {
  it("same tensors and chunk count; means within 2% (median 1e-3); expert counts within 2%; weights read once", async () => {
    const dir = await tempDir();
    // llama-imatrix recorded the text as text.txt; so do we (the dataset name is the path as given)
    await writeFile(join(dir, "text.txt"), await readFile(TEXT));
    const out = join(dir, "ours.gguf");
    const r = spawnSync(process.execPath, [BIN, "imatrix", FIXTURE, "-f", "text.txt", "-c", "256", "-o", out, "--threads", "2", "--json"],
      { encoding: "utf8", cwd: dir });
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ command: "imatrix", chunks: 29, chunkCount: 29, chunkSize: 256, entries: 48, batches: 1, chunksPerBatch: 29, weightReads: 1 });
    expect(j.ppl).toBeGreaterThan(42.5); // llama-imatrix: 42.9355 on the BF16 GGUF
    expect(j.ppl).toBeLessThan(43.4);
    expect(r.stderr).toMatch(/^\[29\/29\] chunks, 7424 tokens in [\d.]+ s \([\d.]+ tokens\/s\), PPL 42\.9/m);

    const ref = await readImatrix(`${GOLD}.gguf`);
    const ours = await readImatrix(out);
    expect(ours.datasets).toEqual(["text.txt"]);
    const a = compareImatrix(ref, ours);
    expect(a.sameNames).toBe(true);
    expect(a.chunkCounts).toEqual([29, 29]);
    expect(a.perTensor).toHaveLength(48);
    expect(a.maxRelL2).toBeLessThan(0.02);
    expect(a.medianRelL2).toBeLessThan(1e-3);
    expect(a.expertCountRelDiff).toBeLessThan(0.02);
    // every token reaches every dense weight, and topk experts per MoE layer
    const bytes = await readFile(out);
    const raw = parseImatrix(bytes, out).raw!;
    expect(Array.from(raw.get("blk.0.attn_k_b.weight")!.counts)).toEqual([29 * 256]);
    expect(raw.get("blk.0.attn_k_b.weight")!.sums).toHaveLength(128); // 32 q_nope columns x 4 heads
    expect(raw.get("blk.0.attn_v_b.weight")!.sums).toHaveLength(512); // 128 latent columns x 4 heads
    const cfg = parseModelConfig(JSON.parse(await readFile(join(FIXTURE, "config.json"), "utf8")));
    for (const l of [1, 2, 3]) {
      const c = raw.get(`blk.${l}.ffn_down_exps.weight`)!.counts;
      expect(c).toHaveLength(cfg.nRoutedExperts);
      expect(Array.from(c).reduce((s, x) => s + x, 0)).toBe(29 * 256 * cfg.nActivatedExperts);
      expect(Array.from(raw.get(`blk.${l}.ffn_gate_inp.weight`)!.counts)).toEqual([29 * 256]);
    }
    expect(raw.has("output.weight")).toBe(false);

    // to-gguf --imatrix takes it: only the tensors llama-imatrix never collects are without weights
    const plan = await planToGguf(new LocalSource(FIXTURE), join(dir, "q.gguf"), { ftype: "Q2_K_S", imatrix: ours });
    expect(plan.imatrix!.missing).toEqual(["output.weight", "token_embd.weight"]);
    expect(plan.imatrix!.missingRequired).toEqual([]);
  }, 120_000);

  it("--output-format dat, --process-output, --chunks, --no-ppl; the legacy file reads back with ncall and the trailer", async () => {
    const dir = await tempDir();
    const out = join(dir, "small.dat");
    const r = deepcast("imatrix", FIXTURE, "--text", TEXT, "--ctx", "64", "--chunks", "3", "--output-format", "dat", "--process-output", "--no-ppl", "-o", out, "--json", "--threads", "2");
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ chunks: 3, chunkCount: 3, chunkSize: 64, entries: 49, ppl: null });
    const im = await readImatrix(out);
    expect(im.format).toBe("dat");
    expect(im.chunkCount).toBe(3);
    expect(im.datasets).toEqual([TEXT]);
    expect(im.entries.get("output.weight")!.values).toHaveLength(256);
  }, 60_000);

  it("--memory picks the chunks per pass; each pass reads every weight once", () => {
    const r = deepcast("imatrix", FIXTURE, "--text", TEXT, "--ctx", "64", "--chunks", "6", "--memory", "300M", "-o", join(ROOT, "never.gguf"), "--dry-run", "--json");
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    const cfg = { budget: 300 * 2 ** 20 };
    expect(j.memoryBudgetBytes).toBe(cfg.budget);
    expect(j.chunksPerBatch).toBeGreaterThanOrEqual(1);
    expect(j.batches).toBe(Math.ceil(6 / j.chunksPerBatch));
  });

  it("clear errors: text shorter than 2 chunks, tokenizer mismatch, unreadable model, existing output", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, "short.txt"), "In the beginning God created the heaven and the earth.");
    const short = deepcast("imatrix", FIXTURE, "--text", join(dir, "short.txt"), "--ctx", "64", "-o", join(dir, "a.gguf"));
    expect(short.code).toBe(1);
    expect(short.stderr).toMatch(/the text tokenizes to only \d+ tokens; llama-imatrix needs at least 128 \(2 chunks\) for a context of 64.*\[INVALID_INPUT\]/);
    await writeFile(join(dir, "ids.json"), JSON.stringify([5, 6, 99999, ...Array(600).fill(7)]));
    const mismatch = deepcast("imatrix", FIXTURE, "--tokens", join(dir, "ids.json"), "--ctx", "64", "-o", join(dir, "b.gguf"));
    expect(mismatch.code).toBe(1);
    expect(mismatch.stderr).toMatch(/tokenizer mismatch: token 2 of the text is id 99999, outside the model's vocabulary of 2048.*\[CONFIG_MISMATCH\]/);
    await writeFile(join(dir, "broken.gguf"), "not a gguf at all");
    for (const m of [join(dir, "broken.gguf"), join(dir, "nowhere")]) {
      const bad = deepcast("imatrix", m, "--text", TEXT, "-o", join(dir, "c.gguf"));
      expect(bad.code, m).toBe(1);
      expect(bad.stderr).toMatch(/^deepcast: error: .*\[[A-Z_]+\]\n$/);
    }
    await writeFile(join(dir, "exists.gguf"), "x");
    const exists = deepcast("imatrix", FIXTURE, "--text", TEXT, "-o", join(dir, "exists.gguf"));
    expect(exists.code).toBe(1);
    expect(exists.stderr).toMatch(/\[OUTPUT_EXISTS\]/);
  }, 60_000);
});

describe("to-gguf --calibration: imatrix first pass, quantize second, resumable", () => {
  it("gives the same file as deepcast imatrix + to-gguf --imatrix, keeps the imatrix beside the output and reuses it", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, "text.txt"), await readFile(TEXT));
    const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", cwd: dir });
    const cal = ["--calibration", "text.txt", "--calibration-ctx", "64", "--calibration-chunks", "4", "--threads", "2", "--json"];
    const one = run("to-gguf", FIXTURE, "-q", "Q2_K_S", "-o", "one.gguf", ...cal);
    expect(one.status, one.stderr).toBe(0);
    expect(JSON.parse(one.stdout).calibration).toMatchObject({ file: "one.imatrix.gguf", reused: false, chunks: 4 });
    const im = await readImatrix(join(dir, "one.imatrix.gguf"));
    expect(im).toMatchObject({ chunkCount: 4, chunkSize: 64, datasets: ["text.txt"] });
    // the two-command way, with the kept imatrix under the same relative name (quantize.imatrix.file records it)
    const mk = run("imatrix", FIXTURE, "-f", "text.txt", "-c", "64", "--chunks", "4", "-o", "two.imatrix.gguf", "--threads", "2");
    expect(mk.status, mk.stderr).toBe(0);
    expect((await readFile(join(dir, "two.imatrix.gguf"))).equals(await readFile(join(dir, "one.imatrix.gguf")))).toBe(true);
    const two = run("to-gguf", FIXTURE, "-q", "Q2_K_S", "-o", "one-b.gguf", "--imatrix", "one.imatrix.gguf", "--threads", "2");
    expect(two.status, two.stderr).toBe(0);
    expect((await readFile(join(dir, "one-b.gguf"))).equals(await readFile(join(dir, "one.gguf")))).toBe(true);
    // rerun: the imatrix is reused, the quantized output is already complete
    const again = run("to-gguf", FIXTURE, "-q", "Q2_K_S", "-o", "one.gguf", ...cal);
    expect(again.status, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/calibration: reusing one\.imatrix\.gguf/);
    expect(JSON.parse(again.stdout).calibration).toEqual({ file: "one.imatrix.gguf", reused: true });
  }, 120_000);
});

describe("a Hugging Face repo id as the model", () => {
  it("imatrix and to-gguf --calibration use the repo's own tokenizer (here the cached snapshot, HF_HUB_OFFLINE=1)", async () => {
    const dir = await tempDir();
    const sha = "0123456789abcdef0123456789abcdef01234567";
    const repo = join(dir, "hub", "models--deepseek-ai--DeepSeek-V3");
    await mkdir(join(repo, "snapshots", sha), { recursive: true });
    await mkdir(join(repo, "refs"));
    await writeFile(join(repo, "refs", "main"), sha);
    for (const f of await readdir(FIXTURE)) await symlink(join(FIXTURE, f), join(repo, "snapshots", sha, f));
    const env = { ...process.env, HF_HUB_OFFLINE: "1", HF_HUB_CACHE: join(dir, "hub"), HF_TOKEN: "" };
    const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env, cwd: dir });
    const im = run("imatrix", "deepseek-ai/DeepSeek-V3", "-f", TEXT, "-c", "128", "--chunks", "2", "-o", "im.gguf", "--json", "--threads", "1");
    expect(im.status, im.stderr).toBe(0);
    expect(JSON.parse(im.stdout)).toMatchObject({ chunks: 2, tokenizer: expect.stringContaining(join("snapshots", sha)) });
    const q = run("to-gguf", "deepseek-ai/DeepSeek-V3", "-q", "IQ2_XXS", "--calibration", TEXT, "--calibration-ctx", "128", "--calibration-chunks", "2",
      "-o", "q.gguf", "--dry-run", "--threads", "1");
    expect(q.status, q.stderr).toBe(0);
    expect(q.stderr).toMatch(/calibration: would compute the importance matrix over 2 chunks of 128/);
  });
});

describe("a GGUF alone as the model", () => {
  it("imatrix and to-gguf --calibration tokenize with the GGUF's own tokenizer.ggml.* metadata: the ids and statistics of the checkpoint's tokenizer.json", async () => {
    const dir = await tempDir();
    const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", cwd: dir });
    const bf16 = run("to-gguf", FIXTURE, "-q", "BF16", "-o", "m.gguf", "--threads", "2");
    expect(bf16.status, bf16.stderr).toBe(0);
    const args = ["-f", TEXT, "-c", "128", "--chunks", "3", "--threads", "2", "--json"];
    const alone = run("imatrix", "m.gguf", ...args, "-o", "alone.gguf");
    expect(alone.status, alone.stderr).toBe(0);
    expect(JSON.parse(alone.stdout).tokenizer).toMatch(/tokenizer\.ggml/);
    const withJson = run("imatrix", "m.gguf", ...args, "--tokenizer", FIXTURE, "-o", "json.gguf");
    expect(withJson.status, withJson.stderr).toBe(0);
    expect(JSON.parse(withJson.stdout).tokenizer).not.toMatch(/tokenizer\.ggml/);
    // same tokens, same statistics; only the dataset name differs, so compare what llama-quantize reads
    const [a, b] = [await readImatrix(join(dir, "alone.gguf")), await readImatrix(join(dir, "json.gguf"))];
    expect(a.chunkCount).toBe(b.chunkCount);
    expect([...a.entries.keys()]).toEqual([...b.entries.keys()]);
    const bytes = (v: Float32Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength);
    for (const [k, e] of a.entries) expect(bytes(e.values).equals(bytes(b.entries.get(k)!.values)), k).toBe(true);
    const q = run("to-gguf", "m.gguf", "-q", "IQ2_XXS", "--calibration", TEXT, "--calibration-ctx", "128", "--calibration-chunks", "2", "-o", "q.gguf", "--threads", "2");
    expect(q.status, q.stderr).toBe(0);
  }, 180_000);
});

describe("imatrix memory plan", () => {
  it("all chunks in one pass when they fit, fewer per pass under a smaller budget, never below one", async () => {
    const cfg = parseModelConfig(JSON.parse(await readFile(join(FIXTURE, "config.json"), "utf8")));
    const big = planImatrixMemory(cfg, 512, 200, 64 * 2 ** 30);
    expect(big).toMatchObject({ chunksPerBatch: 200, batches: 1 });
    const small = planImatrixMemory(cfg, 512, 200, big.fixedBytes + 10.5 * big.perChunkBytes);
    expect(small).toMatchObject({ chunksPerBatch: 10, batches: 20 });
    expect(small.estimatedPeakBytes).toBeLessThanOrEqual(small.budgetBytes);
    expect(planImatrixMemory(cfg, 512, 200, 1).chunksPerBatch).toBe(1);
  });
});

describe("writeImatrix", () => {
  it("makes the output's folder, as every other output (to-gguf --calibration into a new folder)", async () => {
    const path = join(await tempDir(), "new", "folder", "x.imatrix.gguf");
    const d = { entries: new Map([["blk.0.ffn_up.weight", { sums: [1, 2, 3, 4], counts: [2] }]]), datasets: ["t.txt"], chunkCount: 1, chunkSize: 4 };
    expect(await writeImatrix(path, d, "gguf")).toBeGreaterThan(0);
    const back = await readImatrix(path);
    expect([...back.entries.get("blk.0.ffn_up.weight")!.values]).toEqual([0.5, 1, 1.5, 2]);
  });
});
