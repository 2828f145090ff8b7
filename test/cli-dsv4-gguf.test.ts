/**
 * `deepcast imatrix` and `deepcast validate` on a DeepSeek-V4 GGUF, end to end through the CLI: our BF16
 * deepseek4 GGUF of fixtures/tiny-dsv4 against llama-imatrix's and llama-perplexity's results on that very
 * file (fixtures/llama-cpp-tiny-dsv4-imatrix: the kjv eval text, ctx 256, 8 chunks, no BOS since V4's
 * add_bos_token is false), an HF reference for validate's KL statistics, and the metadata checked
 * against the tensors before any pass.
 */
import { spawnSync } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { parseImatrix, readImatrix } from "../src/io/imatrix.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { compareImatrix } from "./imatrix-compare.js";
import { GOLDEN, ROOT, tempDir } from "./helpers.js";

const BIN = join(ROOT, "bin", "deepcast.js");
const V4 = join(ROOT, "fixtures", "tiny-dsv4");
const ORACLE = join(ROOT, "fixtures", "llama-cpp-tiny-dsv4-imatrix", "tiny-dsv4.imatrix.gguf");
/** llama-imatrix's and llama-perplexity's final estimate on the same GGUF, text, ctx and chunks (README). */
const LLAMA_PPL = 3272485.0305;

let dir: string;

function deepcast(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", cwd: dir, env: { ...process.env, HF_HUB_OFFLINE: "1" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(async () => {
  dir = await tempDir("deepcast-cli-dsv4-");
  await writeFile(join(dir, "text.txt"), await readFile(join(GOLDEN, "eval", "kjv_eval.txt")));
  for (const [ftype, name] of [["BF16", "tiny-dsv4-BF16.gguf"], ["Q4_K_M", "tiny-dsv4-Q4_K_M.gguf"]] as const) {
    const plan = await planToGguf(new LocalSource(V4), join(dir, name), { ftype });
    await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
  }
}, 120_000);

describe("deepcast imatrix / validate on a deepseek4 GGUF", () => {
  it("imatrix: llama-imatrix's 70 entries and chunk count; means within 6% (median 0.3%); expert counts within 1%; PPL as llama-imatrix's", () => {
    const r = deepcast("imatrix", "tiny-dsv4-BF16.gguf", "-f", "text.txt", "-c", "256", "--chunks", "8", "-o", "ours.imatrix.gguf", "--threads", "2", "--json");
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ command: "imatrix", chunks: 8, chunkCount: 8, chunkSize: 256, entries: 70 });
    // measured 3,241,342 (llama-imatrix 3,272,485): -1.0%
    expect(Math.abs(j.ppl / LLAMA_PPL - 1)).toBeLessThan(0.025);
    return (async () => {
      const ours = await readImatrix(join(dir, "ours.imatrix.gguf"));
      const ref = parseImatrix(await readFile(ORACLE), "text.txt");
      expect(ours.datasets).toEqual(["text.txt"]);
      const a = compareImatrix(ref, ours);
      console.log(`V4 imatrix vs llama-imatrix: rel. L2 of the means max ${a.maxRelL2.toExponential(2)} median ${a.medianRelL2.toExponential(2)}, expert counts ${a.expertCountRelDiff.toExponential(2)}`);
      expect(a.sameNames).toBe(true);
      expect(a.chunkCounts).toEqual([8, 8]);
      expect(a.perTensor).toHaveLength(70);
      // measured: max 2.6e-2 (blk.3.ffn_down_exps: tokens routed differently at router near-ties), median 1.2e-3
      expect(a.maxRelL2).toBeLessThan(0.06);
      expect(a.medianRelL2).toBeLessThan(3e-3);
      expect(a.expertCountRelDiff).toBeLessThan(0.01); // measured 2.6e-3
      expect(a.zeroMismatches).toBe(0);
      const raw = ours.raw!;
      expect(Array.from(raw.get("blk.2.attn_output_a.weight")!.counts)).toEqual([2048]);
      expect(raw.get("blk.2.attn_output_a.weight")!.sums).toHaveLength(512);
    })();
  }, 300_000);

  it("validate: the GGUF's perplexity as llama-perplexity's, no BOS added (add_bos_token false)", () => {
    const r = deepcast("validate", "tiny-dsv4-BF16.gguf", "-f", "text.txt", "-c", "256", "--chunks", "8", "--threads", "2", "--json");
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ command: "validate", protocol: "llama", ctx: 256, chunks: 8, scoredTokens: 8 * 127, addBos: false });
    // measured 3,241,342 (llama-perplexity 3,272,485): -1.0%
    expect(Math.abs(j.ppl / LLAMA_PPL - 1)).toBeLessThan(0.025);
  }, 300_000);

  it("validate --reference: deepseek4 GGUFs against the FP8 checkpoint, llama.cpp's KL statistics: the default conversion near-lossless, Q4_K_M far from it", () => {
    const kld = (gguf: string) => {
      const r = deepcast("validate", gguf, "--reference", V4, "-f", "text.txt", "-c", "256", "--chunks", "2", "--threads", "2", "--json");
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j.kld.tokens).toBe(2 * 127);
      return j.kld as { meanKld: { value: number }; sameTopPPercent: { value: number } };
    };
    // measured: default (Q8_0 FP8 weights, exact MXFP4 experts) mean KLD 0.0039, same top 98.0%; Q4_K_M 0.229, 68.1%
    const def = kld("tiny-dsv4-BF16.gguf");
    expect(def.meanKld.value).toBeLessThan(0.015);
    expect(def.sameTopPPercent.value).toBeGreaterThan(95);
    const q4 = kld("tiny-dsv4-Q4_K_M.gguf");
    expect(q4.meanKld.value).toBeGreaterThan(10 * def.meanKld.value);
  }, 300_000);

  it("refuses a deepseek4 GGUF whose metadata contradicts its tensors before any pass (CONFIG_MISMATCH, file and tensor named)", async () => {
    const bytes = Buffer.from(await readFile(join(dir, "tiny-dsv4-BF16.gguf")));
    const key = Buffer.from("deepseek4.hash_layer_count");
    const at = bytes.indexOf(key);
    expect(at).toBeGreaterThan(0);
    // key, then its value type (u32 4 = UINT32), then the value
    expect(bytes.readUInt32LE(at + key.length)).toBe(4);
    expect(bytes.readUInt32LE(at + key.length + 4)).toBe(2);
    bytes.writeUInt32LE(3, at + key.length + 4);
    await writeFile(join(dir, "bad.gguf"), bytes);
    const r = deepcast("validate", "bad.gguf", "-f", "text.txt", "-c", "256", "--chunks", "1");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/GGUF metadata \(deepseek4\.\*\) disagrees with the tensors: num_hash_layers = 3, but hash layer layers\.2 has no layers\.2\.ffn\.gate\.tid2eid.*bad\.gguf.*\[CONFIG_MISMATCH\]/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  }, 120_000);

  it("refuses a deepseek4 GGUF without a tensor the pass reads before any pass (NOT_FOUND, file and tensor named)", async () => {
    const bytes = Buffer.from(await readFile(join(dir, "tiny-dsv4-BF16.gguf")));
    const name = Buffer.from("blk.2.attn_q_b.weight");
    const at = bytes.indexOf(name);
    expect(at).toBeGreaterThan(0);
    bytes.write("blk.2.attn_q_X.weight", at, "latin1"); // same length: the header stays valid
    await writeFile(join(dir, "lacking.gguf"), bytes);
    const r = deepcast("imatrix", "lacking.gguf", "-f", "text.txt", "-c", "256", "--chunks", "1", "-o", "x.imatrix.gguf");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/the GGUF has no blk\.2\.attn_q_b\.weight \(layers\.2\.attn\.wq_b\.weight\), which the DeepSeek-V4 forward pass reads \(file [^)]*lacking\.gguf, tensor blk\.2\.attn_q_b\.weight\) \[NOT_FOUND\]/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  }, 120_000);
});
