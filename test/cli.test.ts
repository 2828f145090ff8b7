import { spawnSync } from "node:child_process";
import { cp, readdir, readFile, stat, truncate } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { MANIFEST } from "../src/convert/run-state.js";
import { FIXTURE, ROOT, sha256, tempDir } from "./helpers.js";

const BIN = join(ROOT, "bin", "deepcast.js");

function deepcast(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env: { ...process.env, HF_HUB_OFFLINE: "1" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("deepcast CLI", () => {
  it("has --help for the program and every command", () => {
    const top = deepcast("--help");
    expect(top.code).toBe(0);
    const commands = [...top.stdout.matchAll(/^ {2}deepcast ([a-z0-9-]+)/gm)].map((m) => m[1]!);
    expect(commands).toContain("fp8-to-bf16");
    for (const c of commands) {
      const h = deepcast(c, "--help");
      expect(h.code, c).toBe(0);
      expect(h.stdout).toMatch(/--threads/);
      expect(h.stdout).toMatch(/--dry-run/);
    }
  });

  it("fails with usage on a missing argument", () => {
    const r = deepcast("fp8-to-bf16", FIXTURE);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/Not enough non-option arguments/);
  });

  it("converts the fixture, reports JSON, and reruns as a no-op", async () => {
    const out = join(await tempDir(), "bf16");
    const r = deepcast("fp8-to-bf16", FIXTURE, out, "--json", "--threads", "2");
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ command: "fp8-to-bf16", shards: 3, resumedShards: 0, tensors: 269, fp8Tensors: 232 });
    let onDisk = 0;
    for (const f of (await readdir(out)).filter((f) => f.endsWith(".safetensors"))) onDisk += (await stat(join(out, f))).size;
    expect(j.bytesWritten).toBe(onDisk);
    expect(j.peakRssBytes).toBeGreaterThan(0);
    expect(r.stderr).toMatch(/\[3\/3\] model-00003-of-00003\.safetensors/);
    const again = deepcast("fp8-to-bf16", FIXTURE, out, "--json");
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout).resumedShards).toBe(3);
  });

  it("--dry-run lists the files and sizes and writes nothing", async () => {
    const out = join(await tempDir(), "never");
    const r = deepcast("fp8-to-bf16", FIXTURE, out, "--dry-run", "--json");
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.shards.map((s: { file: string }) => s.file)).toEqual([
      "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]);
    expect(j.outputBytes).toBe(j.shards.reduce((a: number, s: { bytes: number }) => a + s.bytes, 0));
    expect(j.fits).toBe(true);
    expect(await readdir(out).catch(() => null)).toBeNull();
  });

  it("a truncated shard: clear error naming the file, exit 1, no output shard, input unchanged", async () => {
    const input = join(await tempDir(), "in");
    await cp(FIXTURE, input, { recursive: true });
    const shard = join(input, "model-00002-of-00003.safetensors");
    await truncate(shard, 5_000_000);
    const before = sha256(await readFile(shard));
    const out = join(await tempDir(), "out");
    const r = deepcast("fp8-to-bf16", input, out);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^deepcast: error: truncated safetensors file.*model-00002-of-00003\.safetensors/m);
    expect(sha256(await readFile(shard))).toBe(before);
    const left = await readdir(out).catch(() => []);
    expect(left.filter((f) => f !== MANIFEST)).toEqual([]);
  });

  it("refuses an input that is neither a folder nor a repo id", () => {
    const r = deepcast("fp8-to-bf16", "/nonexistent/path/x", "/tmp/unused-out");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/input folder not found and not a Hugging Face repo id.*\/nonexistent\/path\/x/);
  });
});
