/**
 * `deepcast validate` on the tiny-dsv3 fixture: tokenization against the golden ids, the fixture's
 * window protocol against model.py's perplexity (ppl.json), llama-perplexity's chunk protocol (scored
 * positions), KL-divergence statistics (a model against itself, FP8 dequantized to float32 against
 * the same rounded to BF16), the logits dump against the golden logits, and the CLI end to end.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { perplexityWindows } from "../src/model/perplexity.js";
import { findTokenizerDir, loadTokenizer, readTokenIds, tokenizerFromJson } from "../src/model/tokenize.js";
import { formatKldSummary } from "../src/cli/kld-format.js";
import { LogitsFileWriter } from "../src/io/logits-file.js";
import { llamaScoredTokens, planProtocol } from "../src/model/eval-protocol.js";
import { validate } from "../src/model/validate.js";
import { HfWeightSource } from "../src/model/weights.js";
import { FIXTURE, GOLDEN, ROOT, tempDir } from "./helpers.js";

const json = (p: string) => JSON.parse(readFileSync(p, "utf8"));
const EVAL_TEXT = join(GOLDEN, "eval", "kjv_eval.txt");
const evalIds = json(join(GOLDEN, "eval", "kjv_eval.ids.json")).ids as number[];
const pplGolden = json(join(GOLDEN, "ppl.json")).eval as {
  tokens_scored: number; windows: number; modelpy_fp8_mp1_absorb: number; modelpy_bf16_mp1: number; window_nll_sums_modelpy_fp8: number[];
};
const goldenTokens = json(join(GOLDEN, "logits", "tokens.json")) as { eval_token_offsets: number[]; sequences: number[][] };
const goldenBuf = readFileSync(join(GOLDEN, "logits", "logits.fp8-dequant.f32.bin"));
const goldenLogits = new Float32Array(goldenBuf.buffer.slice(goldenBuf.byteOffset, goldenBuf.byteOffset + goldenBuf.byteLength));
const V = 2048;
const THREADS = 2;

const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

let fp8: HfWeightSource;
let bf16: HfWeightSource;
beforeAll(async () => {
  fp8 = await HfWeightSource.open(FIXTURE, { threads: THREADS });
  bf16 = await HfWeightSource.open(FIXTURE, { threads: THREADS, bf16Round: true });
});
afterAll(async () => {
  await fp8?.close();
  await bf16?.close();
});

describe("tokenizer", () => {
  it("reproduces kjv_eval.ids.json from the text with the checkpoint's tokenizer.json, and adds BOS 0", async () => {
    const tok = await loadTokenizer(FIXTURE);
    expect(tok.bosId).toBe(0);
    expect(tok.addBos).toBe(true);
    const ids = tok.encode(readFileSync(EVAL_TEXT, "utf8"));
    expect(ids.length).toBe(pplGolden.tokens_scored);
    expect(ids).toEqual(evalIds);
    expect(tok.decode(ids.slice(0, 40))).toBe(readFileSync(EVAL_TEXT, "utf8").slice(0, tok.decode(ids.slice(0, 40)).length));
  });

  it("takes parsed JSON objects (offline) and honours add_bos_token", () => {
    const tj = json(join(FIXTURE, "tokenizer.json"));
    const tc = json(join(FIXTURE, "tokenizer_config.json"));
    expect(tokenizerFromJson(tj, { ...tc, add_bos_token: false }).addBos).toBe(false);
    expect(tokenizerFromJson(tj, { ...tc, bos_token: "<｜end▁of▁sentence｜>" }).bosId).toBe(1);
    expect(() => tokenizerFromJson(tj, { ...tc, bos_token: "<nope>" })).toThrow(/bos_token "<nope>"/);
  });

  it("finds tokenizer.json beside a model folder or file, in order of preference", async () => {
    expect(await findTokenizerDir([undefined, join(FIXTURE, "model-00001-of-00003.safetensors")])).toBe(FIXTURE);
    expect(await findTokenizerDir([join(GOLDEN, "logits"), FIXTURE])).toBe(FIXTURE);
    expect(await findTokenizerDir([join(GOLDEN, "logits")])).toBeNull();
  });

  it("reads token files: an array, an object with ids, bos_prepended; names the file on errors", async () => {
    const d = await tempDir();
    const f = (name: string, v: unknown) => {
      const p = join(d, name);
      return writeFile(p, typeof v === "string" ? v : JSON.stringify(v)).then(() => p);
    };
    expect(await readTokenIds(await f("a.json", [5, 6, 7]))).toEqual([5, 6, 7]);
    expect(await readTokenIds(await f("b.json", { ids: [5, 6] }))).toEqual([5, 6]);
    expect(await readTokenIds(await f("c.json", { ids: [0, 5, 6], bos_prepended: true }))).toEqual([5, 6]);
    await expect(readTokenIds(await f("d.json", { sequences: [[1]] }))).rejects.toThrow(/"ids" array.*d\.json/);
    await expect(readTokenIds(await f("e.json", [1, -2]))).rejects.toThrow(/ids\[1\].*e\.json/);
    await expect(readTokenIds(await f("f.json", "[1,"))).rejects.toThrow(/not valid JSON.*f\.json/);
    await expect(readTokenIds(join(d, "missing.json"))).rejects.toThrow(/missing\.json/);
  });
});

describe("protocols", () => {
  it("llama: n_ctx chunks with BOS first, the second half scored, llama-perplexity's count", () => {
    const tokens = evalIds.length + 1; // llama.cpp tokenizes with BOS in front
    for (const ctx of [512, 256, 128, 101]) {
      const plan = planProtocol(evalIds, { protocol: "llama", ctx, bos: 0, addBos: true });
      const nChunk = Math.floor(tokens / ctx);
      const first = Math.floor(ctx / 2);
      expect(plan.sequences.length).toBe(nChunk);
      expect(plan.scoredTokens).toBe(nChunk * (ctx - 1 - first));
      expect(plan.scoredTokens).toBe(llamaScoredTokens(tokens, ctx));
      const all = [0, ...evalIds];
      plan.sequences.forEach((q, k) => {
        expect(q.input.length).toBe(ctx);
        expect(q.input[0]).toBe(0);
        expect(q.input.slice(1)).toEqual(all.slice(k * ctx + 1, (k + 1) * ctx));
        expect(q.first).toBe(first);
        // position p predicts chunk token p + 1, for p = first .. ctx-2
        expect(q.targets).toEqual(all.slice(k * ctx + first + 1, (k + 1) * ctx));
      });
    }
    expect(llamaScoredTokens(evalIds.length + 1, 512)).toBe(14 * 255);
    expect(planProtocol(evalIds, { protocol: "llama", ctx: 512, chunks: 3, bos: 0, addBos: true }).scoredTokens).toBe(3 * 255);
    expect(() => planProtocol(evalIds.slice(0, 1000), { protocol: "llama", ctx: 512, bos: 0, addBos: true })).toThrow(/at least 1024 tokens.*only 1001/);
  });

  it("windows: the fixture's windows (BOS + window[:-1], all scored)", () => {
    const plan = planProtocol(evalIds, { protocol: "windows", ctx: 256, bos: 0, addBos: true });
    const ref = perplexityWindows(evalIds, 256, 0);
    expect(plan.sequences.length).toBe(pplGolden.windows);
    expect(plan.scoredTokens).toBe(pplGolden.tokens_scored);
    plan.sequences.forEach((q, i) => expect(q).toEqual({ input: ref[i]!.input, first: 0, targets: ref[i]!.targets }));
    expect(planProtocol(evalIds, { protocol: "windows", ctx: 256, chunks: 4, bos: 0, addBos: true }).sequences.length).toBe(4);
  });
});

describe("validate", () => {
  it("windows --ctx 256: model.py's perplexity, per window and overall; BF16-rounded reference gives its own golden PPL", async () => {
    const plan = planProtocol(evalIds, { protocol: "windows", ctx: 256, bos: 0, addBos: true });
    const r = await validate(fp8, bf16, plan.sequences, { threads: THREADS, batchSequences: 16 });
    expect(r.scoredTokens).toBe(pplGolden.tokens_scored);
    expect(rel(r.candidate.ppl, pplGolden.modelpy_fp8_mp1_absorb)).toBeLessThan(1e-5);
    r.candidate.sequenceNll.forEach((s, i) => expect(rel(s, pplGolden.window_nll_sums_modelpy_fp8[i]!)).toBeLessThan(2e-5));
    expect(rel(r.reference!.ppl, pplGolden.modelpy_bf16_mp1)).toBeLessThan(1e-5);
    // FP8 dequantized to f32 vs rounded to BF16: a small, positive divergence.
    const k = r.kld!;
    expect(k.tokens).toBe(pplGolden.tokens_scored);
    expect(k.meanPplQ.value).toBeCloseTo(r.candidate.ppl, 10);
    expect(k.meanPplBase.value).toBeCloseTo(r.reference!.ppl, 10);
    expect(k.meanKld.value).toBeGreaterThan(0);
    expect(k.meanKld.value).toBeLessThan(1e-3);
    expect(k.kld.minimum).toBeGreaterThanOrEqual(-1e-12);
    expect(k.kld["99.0"]).toBeLessThan(1e-2);
    expect(k.kld.maximum).toBeGreaterThanOrEqual(k.kld["99.9"]);
    expect(k.sameTopPPercent.value).toBeGreaterThan(99);
    expect(k.sameTopPPercent.value).toBeLessThan(100);
    expect(Math.abs(k.meanDeltaPPercent.value)).toBeLessThan(0.05);
    expect(k.rmsDeltaPPercent.value).toBeGreaterThan(0);
    const text = formatKldSummary(k);
    for (const label of ["Mean PPL(Q)", "Mean PPL(base)", "Cor(ln(PPL(Q)), ln(PPL(base)))", "Mean ln(PPL(Q)/PPL(base))", "Mean    KLD:", "99.0%   KLD:", "Median  KLD:", "Mean    Δp:", "RMS Δp", "Same top p:"]) {
      expect(text).toContain(label);
    }
  });

  it("llama protocol: a model against itself has KLD 0, same top 100 %, Δp 0, and the formula's scored count", async () => {
    const plan = planProtocol(evalIds, { protocol: "llama", ctx: 512, chunks: 2, bos: 0, addBos: true });
    const progress: number[] = [];
    const r = await validate(fp8, fp8, plan.sequences, { threads: THREADS, batchSequences: 1, onEvent: (e) => { if (e.kind === "batch") progress.push(e.done); } });
    expect(progress).toEqual([1, 2]);
    expect(r.forwardPasses).toBe(2);
    expect(r.scoredTokens).toBe(llamaScoredTokens(evalIds.length + 1, 512, 2));
    expect(r.scoredTokens).toBe(510);
    const k = r.kld!;
    expect(k.meanKld.value).toBe(0);
    expect(k.kld.maximum).toBe(0);
    expect(k.sameTopPPercent.value).toBe(100);
    expect(k.meanDeltaPPercent.value).toBe(0);
    expect(k.rmsDeltaPPercent.value).toBe(0);
    expect(k.meanPplQ.value).toBe(k.meanPplBase.value);
    expect(k.meanPplRatio.value).toBe(1);
    // Candidate PPL alone equals its PPL next to a reference.
    const alone = await validate(fp8, null, plan.sequences, { threads: THREADS });
    expect(alone.kld).toBeUndefined();
    expect(alone.candidate.ppl).toBe(r.candidate.ppl);
  });

  it("streams every position's logits to a file that appears only when complete, equal to the golden logits", async () => {
    // tokens.json's sequences are [BOS] + 127 eval ids = the windows protocol's inputs for 128-token windows.
    const ids = goldenTokens.eval_token_offsets.flatMap((o) => evalIds.slice(o, o + 128));
    const plan = planProtocol(ids, { protocol: "windows", ctx: 128, bos: 0, addBos: true });
    expect(plan.sequences.map((q) => q.input)).toEqual(goldenTokens.sequences);
    const d = await tempDir();
    const file = join(d, "logits.f32");
    const w = await LogitsFileWriter.create(file);
    let seenTemp = false;
    await validate(fp8, null, plan.sequences, {
      threads: THREADS,
      batchSequences: 3,
      logits: { write: async (l) => { await w.write(l); seenTemp ||= (await readdir(d)).some((n) => n.endsWith(".partial")) && !existsSync(file); } },
    });
    expect(seenTemp).toBe(true);
    await w.commit();
    expect(await readdir(d)).toEqual(["logits.f32"]);
    const buf = await readFile(file);
    expect(buf.length).toBe(4 * 128 * V * 4);
    const ours = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
    let maxAbs = 0;
    for (let i = 0; i < ours.length; i++) maxAbs = Math.max(maxAbs, Math.abs(ours[i]! - goldenLogits[i]!));
    expect(maxAbs).toBeLessThan(1e-4);
    // a spot value, little-endian: sequence 2, position 77, token 1234
    const at = (2 * 128 + 77) * V + 1234;
    expect(buf.readFloatLE(at * 4)).toBeCloseTo(goldenLogits[at]!, 4);
    // abort leaves nothing
    const w2 = await LogitsFileWriter.create(join(d, "other.f32"));
    await w2.write(new Float32Array(8));
    await w2.abort();
    expect(await readdir(d)).toEqual(["logits.f32"]);
  });
});

describe("deepcast validate (CLI)", () => {
  const BIN = join(ROOT, "bin", "deepcast.js");
  const deepcast = (...args: string[]) => {
    const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env: { ...process.env, HF_HUB_OFFLINE: "1" } });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  beforeAll(() => {
    // The CLI runs from dist/: rebuild it when this command's sources are newer.
    const out = join(ROOT, "dist", "cli", "validate.js");
    const srcs = ["src/cli/validate.ts", "src/model/validate.ts", "src/model/tokenize.ts", "src/cli/main.ts"].map((p) => statSync(join(ROOT, p)).mtimeMs);
    if (!existsSync(out) || statSync(out).mtimeMs < Math.max(...srcs)) {
      const b = spawnSync(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", join(ROOT, "tsconfig.build.json")], { encoding: "utf8" });
      if (b.status !== 0) throw new Error(`build failed: ${b.stdout}${b.stderr}`);
    }
  }, 120_000);

  it("documents both protocols in --help", () => {
    const h = deepcast("validate", "--help");
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/llama \(default\): llama-perplexity's own protocol/);
    expect(h.stdout).toMatch(/windows: the tiny-dsv3 fixture's protocol/);
    expect(h.stdout).toMatch(/--dump-logits/);
  });

  it("--protocol windows --json: the golden per-window NLLs; progress on stderr", () => {
    const r = deepcast("validate", FIXTURE, "--text", EVAL_TEXT, "--protocol", "windows", "--chunks", "3", "--json", "--threads", String(THREADS));
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ command: "validate", protocol: "windows", ctx: 256, windows: 3, available: 30, textTokens: 7547, scoredTokens: 768, reference: null, dumpLogits: null });
    j.sequenceNll.forEach((s: number, i: number) => expect(rel(s, pplGolden.window_nll_sums_modelpy_fp8[i]!)).toBeLessThan(2e-5));
    const want = Math.exp(pplGolden.window_nll_sums_modelpy_fp8.slice(0, 3).reduce((a, b) => a + b) / 768);
    expect(rel(j.ppl, want)).toBeLessThan(1e-5);
    expect(r.stderr).toMatch(/\[3\/3\] windows, 768 tokens in .* tokens\/s/);
    expect(j.candidateTokensPerSecond).toBeGreaterThan(0);
  });

  it("--reference: KLD statistics with every figure in --json, llama.cpp's labels without", () => {
    const args = ["validate", FIXTURE, "--reference", FIXTURE, "--text", EVAL_TEXT, "--ctx", "256", "--chunks", "2", "--threads", String(THREADS)];
    const r = deepcast(...args, "--json");
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ protocol: "llama", ctx: 256, chunks: 2, scoredTokens: 2 * 127, forwardPasses: 2 });
    expect(j.kld).toMatchObject({ tokens: 254, meanKld: { value: 0 }, sameTopPPercent: { value: 100 }, meanDeltaPPercent: { value: 0 } });
    expect(Object.keys(j.kld.kld)).toEqual(["maximum", "99.9", "99.0", "95.0", "90.0", "median", "10.0", "5.0", "1.0", "0.1", "minimum"]);
    expect(j.pplBase).toBe(j.ppl);
    const h = deepcast(...args);
    expect(h.code, h.stderr).toBe(0);
    expect(h.stderr).toMatch(/Mean PPL\(Q\) +: +\d+\.\d{6} ±/);
    expect(h.stderr).toMatch(/Same top p: 100\.000 ± +0\.000 %/);
  });

  it("--tokens and --dump-logits: the golden logits, [sequence, position, vocab]; refuses to overwrite without --force", async () => {
    const d = await tempDir();
    const tokens = join(d, "tokens.json");
    await writeFile(tokens, JSON.stringify({ ids: goldenTokens.eval_token_offsets.flatMap((o) => evalIds.slice(o, o + 128)) }));
    const file = join(d, "logits.bin");
    const r = deepcast("validate", FIXTURE, "--tokens", tokens, "--protocol", "windows", "--ctx", "128", "--dump-logits", file, "--json", "--threads", String(THREADS));
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.dumpLogits).toMatchObject({ file, bytes: 4 * 128 * V * 4, shape: [4, 128, V] });
    const buf = await readFile(file);
    expect(buf.length).toBe(4 * 128 * V * 4);
    for (const at of [0, 5, (1 * 128 + 3) * V + 17, (3 * 128 + 127) * V + 2047]) expect(buf.readFloatLE(at * 4)).toBeCloseTo(goldenLogits[at]!, 4);
    const again = deepcast("validate", FIXTURE, "--tokens", tokens, "--protocol", "windows", "--ctx", "128", "--dump-logits", file);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/exists: use --force.*logits\.bin/);
  });

  it("a GGUF candidate (Q8_0 from to-gguf) against the FP8 original: tokenizer from the reference, small positive KLD", async () => {
    const d = await tempDir();
    const gguf = join(d, "tiny-Q8_0.gguf");
    const c = deepcast("to-gguf", FIXTURE, "-q", "Q8_0", "-o", gguf, "--threads", String(THREADS));
    expect(c.code, c.stderr).toBe(0);
    const lone = deepcast("validate", gguf, "--text", EVAL_TEXT);
    expect(lone.code).toBe(1);
    expect(lone.stderr).toMatch(/no tokenizer\.json beside the candidate: give --tokenizer DIR.*tiny-Q8_0\.gguf/);
    const r = deepcast("validate", gguf, "--reference", FIXTURE, "--text", EVAL_TEXT, "--protocol", "windows", "--chunks", "4", "--json", "--threads", String(THREADS));
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.tokenizer).toBe(join(FIXTURE, "tokenizer.json"));
    expect(j.kld.tokens).toBe(1024);
    expect(j.kld.meanKld.value).toBeGreaterThan(1e-6);
    expect(j.kld.meanKld.value).toBeLessThan(5e-3);
    expect(j.kld.sameTopPPercent.value).toBeGreaterThan(95);
    j.sequenceNllBase.forEach((s: number, i: number) => expect(rel(s, pplGolden.window_nll_sums_modelpy_fp8[i]!)).toBeLessThan(2e-5));
  });

  it("clear errors: no input, unreadable files, no tokenizer beside the candidate, text too short for the protocol", async () => {
    expect(deepcast("validate", FIXTURE).stderr).toMatch(/--text FILE or its token ids with --tokens/);
    expect(deepcast("validate", FIXTURE, "--text", "/nonexistent/eval.txt").stderr).toMatch(/cannot read the text.*\/nonexistent\/eval\.txt/);
    // A checkpoint folder without tokenizer files (a GGUF converted elsewhere is the same case).
    const bare = await tempDir();
    for (const f of await readdir(FIXTURE)) if (!f.startsWith("tokenizer")) await symlink(join(FIXTURE, f), join(bare, f));
    const r = deepcast("validate", bare, "--text", EVAL_TEXT);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no tokenizer\.json beside the candidate: give --tokenizer DIR.*--tokens FILE\.json/);
    const ok = deepcast("validate", bare, "--tokenizer", FIXTURE, "--text", EVAL_TEXT, "--protocol", "windows", "--chunks", "1", "--json", "--threads", String(THREADS));
    expect(ok.code, ok.stderr).toBe(0);
    expect(rel(JSON.parse(ok.stdout).nll, pplGolden.window_nll_sums_modelpy_fp8[0]!)).toBeLessThan(2e-5);
    const short = join(bare, "short.txt");
    await writeFile(short, "1:1 In the beginning.");
    expect(deepcast("validate", FIXTURE, "--text", short).stderr).toMatch(/needs at least 1024 tokens for a context of 512/);
    const dry = deepcast("validate", FIXTURE, "--text", EVAL_TEXT, "--dry-run", "--json");
    expect(JSON.parse(dry.stdout)).toMatchObject({ protocol: "llama", ctx: 512, chunks: 14, scoredTokens: 3570 });
  });
});
