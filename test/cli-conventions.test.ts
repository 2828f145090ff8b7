/**
 * The habits of llama.cpp users on the command line: `--version`, the version in every --json summary,
 * llama-perplexity's -m/-f/-c/--chunks for validate and convert_hf_to_gguf's --outfile/--outtype for to-gguf.
 * Runs the built CLI (dist/, built by `npm test`).
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { FIXTURE, GOLDEN, ROOT, tempDir } from "./helpers.js";

const BIN = join(ROOT, "bin", "deepcast.js");
const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
const EVAL_TEXT = join(GOLDEN, "eval", "kjv_eval.txt");

function deepcast(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env: { ...process.env, HF_HUB_OFFLINE: "1" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("llama.cpp and Hugging Face command-line habits", () => {
  it("--version prints package.json's version and exits 0", () => {
    const r = deepcast("--version");
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(VERSION);
    expect(deepcast("--help").stdout).toMatch(/--version/);
  });

  it("every --json summary carries the version (dry runs and real runs)", async () => {
    const out = await tempDir();
    const summaries = [
      deepcast("validate", FIXTURE, "--text", EVAL_TEXT, "--dry-run", "--json"),
      deepcast("to-gguf", FIXTURE, "-q", "Q8_0", "-o", join(out, "x.gguf"), "--dry-run", "--json"),
      deepcast("fp8-to-bf16", FIXTURE, join(out, "bf16"), "--dry-run", "--json"),
      deepcast("to-demo", FIXTURE, join(out, "demo"), "--model-parallel", "1", "--dry-run", "--json"),
      deepcast("validate", FIXTURE, "--text", EVAL_TEXT, "--protocol", "windows", "--chunks", "1", "--json", "--threads", "2"),
    ];
    for (const r of summaries) {
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).version).toBe(VERSION);
    }
  });

  it("validate takes llama-perplexity's -m MODEL -f TEXT -c CTX --chunks N", () => {
    const a = deepcast("validate", "-m", FIXTURE, "-f", EVAL_TEXT, "-c", "256", "--chunks", "3", "--dry-run", "--json");
    const b = deepcast("validate", FIXTURE, "--text", EVAL_TEXT, "--ctx", "256", "--chunks", "3", "--dry-run", "--json");
    expect(a.code, a.stderr).toBe(0);
    expect(JSON.parse(a.stdout)).toEqual(JSON.parse(b.stdout));
    expect(JSON.parse(a.stdout)).toMatchObject({ candidate: FIXTURE, ctx: 256, chunks: 3 });
    const none = deepcast("validate", "-f", EVAL_TEXT);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/give the model to evaluate.*-m MODEL.*\[USAGE\]/);
  });

  it("to-gguf takes convert_hf_to_gguf's --outfile and --outtype", async () => {
    const out = join(await tempDir(), "tiny.gguf");
    const a = deepcast("to-gguf", FIXTURE, "--outtype", "q8_0", "--outfile", out, "--dry-run", "--json");
    const b = deepcast("to-gguf", FIXTURE, "-q", "Q8_0", "-o", out, "--dry-run", "--json");
    expect(a.code, a.stderr).toBe(0);
    const ja = JSON.parse(a.stdout);
    const jb = JSON.parse(b.stdout);
    delete ja.freeBytes;
    delete jb.freeBytes;
    expect(ja).toEqual(jb);
    expect(ja).toMatchObject({ quant: "Q8_0", files: [{ file: out }] });
  });
});
