/**
 * `deepcast validate` and `deepcast imatrix` on DeepSeek-V3.2, end to end through the CLI: the FP8
 * checkpoint fixtures/tiny-dsv32 and its deepseek32 GGUF (BF16: the checkpoint's values exactly, so
 * both give the same numbers). Windows of 64 and 128 tokens, past index_topk (32): the indexer selects.
 * imatrix is compared with llama-imatrix's file of the same GGUF, text, context and chunk count
 * (fixtures/llama-cpp-tiny-dsv32-imatrix, provenance in its README).
 */
import { spawnSync } from "node:child_process";
import { mkdir, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { parseImatrix, readImatrix } from "../src/io/imatrix.js";
import { compareImatrix } from "./imatrix-compare.js";
import { GOLDEN, ROOT, tempDir } from "./helpers.js";

const BIN = join(ROOT, "bin", "deepcast.js");
const V32 = join(ROOT, "fixtures", "tiny-dsv32");
const GOLD = join(ROOT, "fixtures", "llama-cpp-tiny-dsv32-imatrix", "tiny-dsv32.imatrix.gguf");
const TEXT = join(GOLDEN, "eval", "kjv_eval.txt");

function deepcast(args: string[], cwd?: string) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", cwd, env: { ...process.env, HF_HUB_OFFLINE: "1" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

let dir: string;
let gguf: string;

beforeAll(async () => {
  dir = await tempDir("deepcast-cli-dsv32-");
  // llama-imatrix recorded the text as text.txt; so do we (the dataset name is the path as given)
  await writeFile(join(dir, "text.txt"), await readFile(TEXT));
  gguf = join(dir, "tiny-dsv32-BF16.gguf");
  const r = deepcast(["to-gguf", V32, "-q", "BF16", "-o", gguf, "--threads", "2"]);
  expect(r.code, r.stderr).toBe(0);
}, 60_000);

describe("deepcast validate on DeepSeek-V3.2", () => {
  it("runs on the FP8 checkpoint and on its deepseek32 GGUF, with the same perplexity", () => {
    const runs = [V32, gguf].map((m) => {
      const r = deepcast(["validate", m, "--text", TEXT, "--ctx", "64", "--chunks", "3", "--threads", "2", "--json"]);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as { ppl: number; nll: number; scoredTokens: number; chunks: number };
    });
    expect(runs[0]).toMatchObject({ chunks: 3, scoredTokens: 3 * 31 });
    expect(Number.isFinite(runs[0]!.ppl)).toBe(true);
    // far from uniform (2,048) either way: the fixture's head makes confident, wrong predictions
    expect(runs[0]!.ppl).toBeGreaterThan(1e4);
    expect(runs[1]!.nll).toBe(runs[0]!.nll);
  }, 60_000);

  it("compares the checkpoint with its Q8_0 GGUF (KLD), the indexer active in both", () => {
    const q8 = join(dir, "tiny-dsv32-Q8_0.gguf");
    const c = deepcast(["to-gguf", V32, "-q", "Q8_0", "-o", q8, "--threads", "2"]);
    expect(c.code, c.stderr).toBe(0);
    const r = deepcast(["validate", q8, "--reference", V32, "--text", TEXT, "--ctx", "64", "--chunks", "2", "--threads", "2", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.reference).toBe(V32);
    expect(j.kld.tokens).toBe(2 * 31);
    // measured 0.18 (median 0.023): Q8_0's weight error moves the FP8 indexer's picks where scores are close
    expect(j.kld.meanKld.value).toBeGreaterThan(0);
    expect(j.kld.meanKld.value).toBeLessThan(0.5);
    expect(j.kld.kld.median).toBeLessThan(0.1);
  }, 60_000);
});

describe("a V3.2 config.json that lies about the indexer", () => {
  it("is refused before the pass, naming the file and the key (and the tensor that disagrees)", async () => {
    const cases: [string, (c: Record<string, unknown>) => void, RegExp][] = [
      ["no-topk", (c) => delete c.index_topk, /config\.json has no index_topk.*\[CONFIG_MISMATCH\]/],
      ["heads", (c) => (c.index_n_heads = 8), /index_n_heads \* index_head_dim = 1024, but tensor model\.layers\.\d\.self_attn\.indexer\.wq_b\.weight has 512.*\[CONFIG_MISMATCH\]/],
    ];
    for (const [name, patch, want] of cases) {
      const d = join(dir, `lie-${name}`);
      await mkdir(d);
      for (const f of await readdir(V32)) if (f !== "config.json") await symlink(join(V32, f), join(d, f));
      const cfg = JSON.parse(await readFile(join(V32, "config.json"), "utf8")) as Record<string, unknown>;
      patch(cfg);
      await writeFile(join(d, "config.json"), JSON.stringify(cfg));
      const r = deepcast(["validate", d, "--text", TEXT, "--ctx", "64", "--chunks", "1", "--threads", "2"]);
      expect(r.code, name).toBe(1);
      expect(r.stderr, name).toMatch(want);
      expect(r.stderr, name).toMatch(/config\.json/);
      expect(r.stderr, name).not.toMatch(/\n\s+at /);
    }
  }, 60_000);
});

describe("deepcast imatrix on DeepSeek-V3.2 vs llama-imatrix on the same deepseek32 GGUF", () => {
  it("same 60 tensors (the indexer's three per layer included) and chunk count, exact dense counts, close means; the GGUF gives the checkpoint's statistics", async () => {
    const outs: string[] = [];
    for (const [m, name] of [[V32, "ours-hf.gguf"], [gguf, "ours-gguf.gguf"]] as const) {
      const out = join(dir, name);
      const r = deepcast(["imatrix", m, "-f", "text.txt", "-c", "128", "--chunks", "4", "-o", out, "--threads", "2", "--json"], dir);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j).toMatchObject({ command: "imatrix", chunks: 4, chunkCount: 4, chunkSize: 128, entries: 60, weightReads: 1 });
      // llama-imatrix: PPL 2023035 (random weights); the FP8 indexer moves ours by a few per cent
      expect(j.ppl).toBeGreaterThan(2023035 * 0.9);
      expect(j.ppl).toBeLessThan(2023035 * 1.1);
      outs.push(out);
    }
    const ref = await readImatrix(GOLD);
    const ours = await readImatrix(outs[0]!);
    expect(ours.datasets).toEqual(["text.txt"]);
    const a = compareImatrix(ref, ours);
    console.log(`V3.2 imatrix vs llama-imatrix: rel. L2 of the means max ${a.maxRelL2.toExponential(2)} median ${a.medianRelL2.toExponential(2)}, expert counts ${a.expertCountRelDiff.toExponential(2)}`);
    expect(a.sameNames).toBe(true);
    expect(a.chunkCounts).toEqual([4, 4]);
    expect(a.perTensor).toHaveLength(60);
    // measured: max 9.9e-2 (blk.3.ffn_down_exps), median 9.4e-3, expert counts 1.1e-2 (see the fixture's README)
    expect(a.maxRelL2).toBeLessThan(0.2);
    expect(a.medianRelL2).toBeLessThan(2e-2);
    expect(a.expertCountRelDiff).toBeLessThan(0.03);
    const raw = parseImatrix(await readFile(outs[0]!), outs[0]!).raw!;
    const refRaw = ref.raw!;
    for (let l = 0; l < 4; l++) {
      for (const [t, cols] of [["indexer.attn_q_b", 128], ["indexer.attn_k", 256], ["indexer.proj", 256]] as const) {
        const name = `blk.${l}.${t}.weight`;
        expect(raw.get(name)!.sums, name).toHaveLength(cols);
        expect(Array.from(raw.get(name)!.counts), name).toEqual([4 * 128]);
        expect(Array.from(refRaw.get(name)!.counts), name).toEqual([4 * 128]);
      }
    }
    // layer 0's indexer inputs precede any attention: llama.cpp's (from BF16) and ours agree to float rounding
    for (const name of ["blk.0.indexer.attn_k.weight", "blk.0.indexer.proj.weight", "blk.0.indexer.attn_q_b.weight"]) {
      expect(a.perTensor.find((p) => p.name === name)!.relL2, name).toBeLessThan(1e-3);
    }
    // the BF16 GGUF holds the checkpoint's values: the same statistics, bit for bit
    const fromGguf = parseImatrix(await readFile(outs[1]!), outs[1]!).raw!;
    for (const [name, e] of raw) {
      expect(Buffer.from(fromGguf.get(name)!.sums.buffer).equals(Buffer.from(e.sums.buffer)), name).toBe(true);
    }
  }, 120_000);
});
