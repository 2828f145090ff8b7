/**
 * Helpers for the hostile-input tests: each builds a bad input from the real FP8 fixture in a temp
 * folder (files hard-linked; an edited file is replaced, never written through the link), runs the
 * real CLI, and checks what a user relies on: the exit status, the error code, no stack trace, no
 * output under the final name, the input unchanged.
 */
import { spawnSync } from "node:child_process";
import { link, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { expect } from "vitest";
import type { ErrorCode } from "../src/errors.js";
import { FIXTURE, ROOT, sha256, tempDir } from "./helpers.js";

export const BIN = join(ROOT, "bin", "deepcast.js");

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs bin/deepcast.js (built dist/). `ulimitFileKb` runs it under `ulimit -f`. */
export function deepcast(args: string[], opts: { ulimitFileKb?: number } = {}): CliResult {
  const env = { ...process.env, HF_HUB_OFFLINE: "1" };
  const r = opts.ulimitFileKb !== undefined
    ? spawnSync("bash", ["-c", `ulimit -f ${opts.ulimitFileKb}; exec "$0" "$@"`, process.execPath, BIN, ...args], { encoding: "utf8", env })
    : spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A private copy of the fixture (hard links), in a fresh temp folder. */
export async function fixtureCopy(name = "in"): Promise<string> {
  const d = join(await tempDir("deepcast-hostile-"), name);
  await mkdir(d, { recursive: true });
  for (const f of await readdir(FIXTURE)) await link(join(FIXTURE, f), join(d, f));
  return d;
}

/** Replaces a file of a copy (unlinks the hard link first, so the fixture is never touched). */
export async function replaceFile(path: string, data: string | Uint8Array): Promise<void> {
  await rm(path, { force: true });
  await writeFile(path, data);
}

export async function patchConfig(dir: string, patch: Record<string, unknown>): Promise<void> {
  const cfg = JSON.parse(await readFile(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  await replaceFile(join(dir, "config.json"), JSON.stringify({ ...cfg, ...patch }, null, 2));
}

export interface StTensor {
  name: string;
  dtype: string;
  shape: number[];
  data: Buffer;
}

/** Reads a safetensors file into its tensors (in data order) and metadata. */
export async function readShard(path: string): Promise<{ tensors: StTensor[]; metadata: Record<string, string> | null }> {
  const buf = await readFile(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const metadata = (header.__metadata__ as unknown as Record<string, string>) ?? null;
  const tensors = Object.entries(header)
    .filter(([k]) => k !== "__metadata__")
    .map(([name, e]) => ({ name, dtype: e.dtype, shape: e.shape, data: Buffer.from(buf.subarray(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1])), begin: e.data_offsets[0] }))
    .sort((a, b) => a.begin - b.begin)
    .map(({ begin: _b, ...t }) => t);
  return { tensors, metadata };
}

/** Encodes tensors as a safetensors file (contiguous data, header padded to 8 bytes). */
export function encodeShard(tensors: StTensor[], metadata: Record<string, string> | null): Buffer {
  const obj: Record<string, unknown> = {};
  if (metadata) obj.__metadata__ = metadata;
  let pos = 0;
  for (const t of tensors) {
    obj[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [pos, pos + t.data.length] };
    pos += t.data.length;
  }
  let json = Buffer.from(JSON.stringify(obj));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const pre = Buffer.alloc(8);
  pre.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([pre, json, ...tensors.map((t) => t.data)]);
}

/** Rewrites the shard of a copy that holds `tensor`, letting `edit` change that tensor. */
export async function editTensor(dir: string, tensor: string, edit: (t: StTensor) => void): Promise<string> {
  const index = JSON.parse(await readFile(join(dir, "model.safetensors.index.json"), "utf8")) as { weight_map: Record<string, string> };
  const shard = index.weight_map[tensor]!;
  const { tensors, metadata } = await readShard(join(dir, shard));
  const t = tensors.find((x) => x.name === tensor)!;
  edit(t);
  await replaceFile(join(dir, shard), encodeShard(tensors, metadata));
  return shard;
}

/** sha256 of every file in a folder (the input must be unchanged by a failed run). */
export async function hashDir(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort()) {
    const p = join(dir, f);
    if ((await stat(p)).isFile()) out[f] = sha256(await readFile(p));
  }
  return out;
}

/** The failed run: exit status, error code, one clean message, no stack frames. */
export function expectError(r: CliResult, code: ErrorCode, mentions: (string | RegExp)[] = []): void {
  const status = code === "USAGE" ? 2 : 1;
  expect(r.status, r.stderr).toBe(status);
  expect(r.stderr).toMatch(new RegExp(`^deepcast: error: .*\\[${code}\\]$`, "m"));
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.stderr).not.toMatch(/unexpected error|TypeError|RangeError/);
  for (const m of mentions) expect(r.stderr).toMatch(typeof m === "string" ? new RegExp(m.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")) : m);
}

/** Files left under an output folder, without run records, locks and temporaries. */
export async function outputsIn(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.filter((n) => !n.startsWith(".") && !n.endsWith(".partial"));
}

export async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null)) !== null;
}

export type Command = "fp8-to-bf16" | "to-demo" | "to-gguf" | "validate";

/** Arguments that run `command` from IN to OUT (a folder, or OUT/model.gguf for to-gguf). */
export function argsFor(command: Command, input: string, out: string, extra: string[] = []): string[] {
  switch (command) {
    case "fp8-to-bf16": return ["fp8-to-bf16", input, out, "--threads", "2", ...extra];
    case "to-demo": return ["to-demo", input, out, "--model-parallel", "1", ...(extra.includes("--dtype") ? [] : ["--dtype", "bf16"]), "--threads", "2", ...extra];
    case "to-gguf": return ["to-gguf", input, "-o", join(out, "model.gguf"), "-q", "Q8_0", "--threads", "2", ...extra];
    case "validate": return ["validate", input, "--tokens", TOKENS_PLACEHOLDER, "--protocol", "windows", "--ctx", "8", "--chunks", "1", ...extra];
  }
}
export const TOKENS_PLACEHOLDER = "@tokens";

export interface Case {
  name: string;
  command: Command;
  /** Makes the input lie (in a private copy). */
  build: (input: string) => Promise<void>;
  code: ErrorCode;
  mentions?: (string | RegExp)[];
  extra?: string[];
}

/** One run of a hostile case with every check. */
export async function runCase(c: Case): Promise<void> {
  const input = await fixtureCopy();
  await c.build(input);
  const before = await hashDir(input);
  const out = join(await tempDir("deepcast-hostile-out-"), "out");
  const tokens = join(await tempDir(), "tokens.json");
  await writeFile(tokens, JSON.stringify(Array.from({ length: 16 }, (_, i) => 10 + i)));
  const args = argsFor(c.command, input, out, c.extra).map((a) => (a === TOKENS_PLACEHOLDER ? tokens : a));
  const r = deepcast(args);
  expectError(r, c.code, c.mentions ?? []);
  expect(await outputsIn(out)).toEqual([]);
  expect((await readdir(out).catch(() => [] as string[])).filter((n) => n.endsWith(".lock"))).toEqual([]);
  expect(await hashDir(input)).toEqual(before);
}

