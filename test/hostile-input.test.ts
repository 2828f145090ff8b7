/**
 * Every lie in the input ends in a clear error (issue 8, items 6-15): each case builds one bad input
 * from the real FP8 fixture, runs the real CLI once, and checks the exit status, the error code, that
 * no stack trace is printed, that nothing is left under the final output name and that the input is
 * unchanged. Cases that must succeed say so.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdir, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { DeepcastError, ErrorCode } from "../src/errors.js";
import { parseHeader } from "../src/io/safetensors.js";
import { tempDir } from "./helpers.js";
import {
  argsFor, deepcast, editTensor, encodeShard, exists, expectError, fixtureCopy, hashDir, outputsIn, readShard, replaceFile, runCase, type Case,
} from "./hostile.js";

/** Sets FP8 code `code` at element `i` of an FP8 weight. */
const fp8Code = (tensor: string, i: number, code: number) => (d: string) => editTensor(d, tensor, (t) => {
  if (i >= t.data.length) throw new RangeError(`${tensor} has ${t.data.length} elements`);
  t.data[i] = code;
}).then(() => undefined);
/** Sets block scale `i` of a weight's scale_inv. */
const scaleValue = (weight: string, i: number, v: number) => (d: string) =>
  editTensor(d, `${weight}_scale_inv`, (t) => { t.data.writeFloatLE(v, i * 4); }).then(() => undefined);
const W = "model.layers.1.mlp.experts.3.up_proj.weight";

describe("7. non-finite data and scales of the wrong kind", () => {
  const cases: Case[] = [
    { name: "fp8-to-bf16: FP8 NaN code 0x7F", command: "fp8-to-bf16", build: fp8Code(W, 1000, 0x7f), code: "NON_FINITE", mentions: [W, "row 3", "--allow-non-finite"] },
    { name: "to-gguf: FP8 NaN code 0xFF", command: "to-gguf", build: fp8Code(W, 5, 0xff), code: "NON_FINITE", mentions: [W] },
    { name: "to-demo --dtype bf16: FP8 NaN code 0xFF", command: "to-demo", build: fp8Code(W, 60000, 0xff), code: "NON_FINITE", mentions: [W] },
    { name: "to-demo --dtype keep (copied, not cast): FP8 NaN code 0x7F", command: "to-demo", extra: ["--dtype", "keep"], build: fp8Code(W, 60000, 0x7f), code: "NON_FINITE", mentions: [W] },
    { name: "to-demo --dtype keep: NaN scale", command: "to-demo", extra: ["--dtype", "keep"], build: scaleValue(W, 1, NaN), code: "NON_FINITE", mentions: [`${W}_scale_inv`] },
    { name: "validate (HF): FP8 NaN code", command: "validate", build: fp8Code("model.layers.0.self_attn.q_a_proj.weight", 7, 0x7f), code: "NON_FINITE", mentions: ["q_a_proj"] },
    { name: "fp8-to-bf16: NaN scale", command: "fp8-to-bf16", build: scaleValue(W, 1, NaN), code: "NON_FINITE", mentions: [`${W}_scale_inv`, "block [0, 1]"] },
    { name: "to-gguf: Inf scale", command: "to-gguf", build: scaleValue(W, 0, Infinity), code: "NON_FINITE", mentions: [`${W}_scale_inv`] },
    { name: "to-demo: absurd scale 1e37", command: "to-demo", build: scaleValue(W, 0, 1e37), code: "BAD_SCALE", mentions: [`${W}_scale_inv`] },
    { name: "to-gguf: negative scale", command: "to-gguf", build: scaleValue(W, 0, -0.5), code: "BAD_SCALE", mentions: [`${W}_scale_inv`] },
    ...(["BF16", "F16"] as const).flatMap((dtype) => (["fp8-to-bf16", "to-gguf"] as const).map((command): Case => ({
      name: `${command}: a ${dtype} scale`, command, code: "BAD_SCALE", mentions: [`${W}_scale_inv`, dtype],
      build: (d) => editTensor(d, `${W}_scale_inv`, (t) => { t.dtype = dtype; t.data = t.data.subarray(0, t.data.length / 2); }).then(() => undefined),
    }))),
    ...(["fp8-to-bf16", "to-gguf", "to-demo", "validate"] as const).map((command): Case => ({
      name: `${command}: an I32 scale`, command, code: "BAD_SCALE", mentions: [`${W}_scale_inv`, "I32"],
      build: (d) => editTensor(d, `${W}_scale_inv`, (t) => { t.dtype = "I32"; }).then(() => undefined),
    })),
    ...(["fp8-to-bf16", "to-gguf", "to-demo"] as const).map((command): Case => ({
      name: `${command}: a U8 "FP8" weight carrying a scale`, command, code: "BAD_SCALE", mentions: [W, "U8"],
      build: (d) => editTensor(d, W, (t) => { t.dtype = "U8"; }).then(() => undefined),
    })),
    {
      // [2,4] -> [4,2]: same bytes, wrong grid
      name: "validate: a scale of the wrong shape", command: "validate", code: "BAD_SCALE", mentions: ["model.layers.0.mlp.down_proj.weight_scale_inv", "scale shape [4,2]"],
      build: (d) => editTensor(d, "model.layers.0.mlp.down_proj.weight_scale_inv", (t) => { t.shape = [4, 2]; }).then(() => undefined),
    },
  ];
  it.each(cases.map((c) => [c.name, c] as const))("%s", async (_n, c) => runCase(c));

  it("--allow-non-finite converts NaN codes on purpose (the NaN lands in the output)", async () => {
    const input = await fixtureCopy();
    await fp8Code(W, 1000, 0x7f)(input);
    const out = join(await tempDir(), "out");
    const r = deepcast(["fp8-to-bf16", input, out, "--allow-non-finite", "--threads", "2"]);
    expect(r.status, r.stderr).toBe(0);
    const index = JSON.parse(await readFile(join(out, "model.safetensors.index.json"), "utf8")) as { weight_map: Record<string, string> };
    const t = (await readShard(join(out, index.weight_map[W]!))).tensors.find((x) => x.name === W)!;
    const v = t.data.readUInt16LE(2000);
    expect((v & 0x7f80) === 0x7f80 && (v & 0x7f) !== 0).toBe(true); // a BF16 NaN
  });

  it("validate exits NON_FINITE when the PPL is NaN (a NaN norm weight), and writes no logits", async () => {
    const input = await fixtureCopy();
    await editTensor(input, "model.norm.weight", (t) => { t.data.writeUInt16LE(0x7fc0, 0); });
    const tokens = join(await tempDir(), "tokens.json");
    await writeFile(tokens, JSON.stringify(Array.from({ length: 16 }, (_, i) => 10 + i)));
    const logits = join(await tempDir(), "logits.bin");
    const r = deepcast(["validate", input, "--tokens", tokens, "--protocol", "windows", "--ctx", "8", "--chunks", "1", "--dump-logits", logits, "--json"]);
    expectError(r, "NON_FINITE", ["PPL is NaN"]);
    expect(JSON.parse(r.stdout).ppl).toBeNull(); // NaN in JSON
    expect(await exists(logits)).toBe(false);
  });
});

describe("8. one run per output; OUT never inside IN", () => {
  it("a lock held by a live run: the second run says so and exits; the lock is left to its owner", async () => {
    const out = join(await tempDir(), "out");
    await mkdir(out);
    const lock = join(out, ".deepcast-run.json.lock");
    await writeFile(lock, JSON.stringify({ pid: process.pid, host: hostname() }));
    const r = deepcast(argsFor("fp8-to-bf16", await fixtureCopy(), out));
    expectError(r, "OUTPUT_LOCKED", [`run ${process.pid}`, out]);
    expect(await outputsIn(out)).toEqual([]);
    expect(await exists(lock)).toBe(true);
  });

  it("a stale lock (its process is gone) is taken over with a note, and released at the end", async () => {
    const out = join(await tempDir(), "out");
    await mkdir(out);
    const dead = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" }).stdout;
    const lock = join(out, ".model.gguf.deepcast-run.json.lock");
    await writeFile(lock, JSON.stringify({ pid: Number(dead), host: hostname() }));
    const r = deepcast(argsFor("to-gguf", await fixtureCopy(), out));
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`taking over the lock of run ${dead}`));
    expect(await exists(join(out, "model.gguf"))).toBe(true);
    expect(await exists(lock)).toBe(false);
  });

  it("two runs at once on one OUT: exactly one writes, the other exits OUTPUT_LOCKED or finds it done", async () => {
    const input = await fixtureCopy();
    const out = join(await tempDir(), "out");
    const { spawn } = await import("node:child_process");
    const start = () => new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const p = spawn(process.execPath, [join(import.meta.dirname, "..", "bin", "deepcast.js"), ...argsFor("to-gguf", input, out)], { env: { ...process.env, HF_HUB_OFFLINE: "1" } });
      let stderr = "";
      p.stderr.on("data", (b: Buffer) => { stderr += b.toString(); });
      p.on("close", (status) => resolve({ status, stderr }));
    });
    const rs = await Promise.all([start(), start()]);
    for (const r of rs) {
      expect(r.stderr).not.toMatch(/^\s+at /m);
      if (r.status !== 0) expect(r.stderr).toMatch(/\[OUTPUT_LOCKED\]$/m);
    }
    expect(rs.some((r) => r.status === 0)).toBe(true);
    expect(await exists(join(out, "model.gguf"))).toBe(true);
    expect((await readdir(out)).filter((n) => n.endsWith(".lock"))).toEqual([]);
  });

  it.each(["fp8-to-bf16", "to-demo", "to-gguf"] as const)("%s: OUT inside IN is refused", async (command) => {
    const input = await fixtureCopy();
    const before = await hashDir(input);
    const r = deepcast(argsFor(command, input, join(input, "sub", "out")));
    expectError(r, "OUTPUT_IN_INPUT", [input]);
    expect(await exists(join(input, "sub"))).toBe(false);
    expect(await hashDir(input)).toEqual(before);
  });

  it("validate: --dump-logits inside the (folder) candidate is refused", async () => {
    const input = await fixtureCopy();
    const tokens = join(await tempDir(), "t.json");
    await writeFile(tokens, "[10, 11, 12, 13, 14, 15, 16, 17, 18]");
    const r = deepcast(["validate", input, "--tokens", tokens, "--protocol", "windows", "--ctx", "8", "--dump-logits", join(input, "logits.bin")]);
    expectError(r, "OUTPUT_IN_INPUT");
    expect(await exists(join(input, "logits.bin"))).toBe(false);
  });
});

describe("9. write errors are reported, not thrown", () => {
  it.each(["fp8-to-bf16", "to-demo", "to-gguf"] as const)("%s: the file-size limit (EFBIG) on the output", async (command) => {
    const input = await fixtureCopy();
    const out = join(await tempDir(), "out");
    const r = deepcast(argsFor(command, input, out), { ulimitFileKb: 1024 });
    expectError(r, "WRITE_FAILED", ["file too large"]);
    expect(await outputsIn(out)).toEqual([]);
  });

  it("fp8-to-bf16: a folder in the way of config.json's temporary (EISDIR) is a WRITE_FAILED naming config.json", async () => {
    const out = join(await tempDir(), "out");
    await mkdir(join(out, ".config.json.partial"), { recursive: true });
    const r = deepcast(argsFor("fp8-to-bf16", await fixtureCopy(), out, ["--force"]));
    expectError(r, "WRITE_FAILED", [join(out, "config.json")]);
    expect(await exists(join(out, "config.json"))).toBe(false);
  });

  it("to-gguf: an output folder below a regular file (ENOTDIR) is a WRITE_FAILED", async () => {
    const d = await tempDir();
    await writeFile(join(d, "file"), "x");
    const r = deepcast(["to-gguf", await fixtureCopy(), "-o", join(d, "file", "sub", "m.gguf"), "-q", "Q8_0"]);
    expectError(r, "WRITE_FAILED", [join(d, "file")]);
  });

  it("fp8-to-bf16: OUT is a regular file", async () => {
    const d = await tempDir();
    await writeFile(join(d, "out"), "x");
    expectError(deepcast(argsFor("fp8-to-bf16", await fixtureCopy(), join(d, "out"), ["--force"])), "NOT_A_FILE", [join(d, "out")]);
    expect(await readFile(join(d, "out"), "utf8")).toBe("x");
  });
});

describe("10. an output name taken by something that is not a regular file is never replaced, even with --force", () => {
  const fifo = async (path: string) => { execFileSync("mkfifo", [path]); };

  it("validate --dump-logits FIFO --force", async () => {
    const d = await tempDir();
    await fifo(join(d, "logits"));
    const tokens = join(d, "t.json");
    await writeFile(tokens, "[10, 11, 12, 13, 14, 15, 16, 17, 18]");
    const r = deepcast(["validate", await fixtureCopy(), "--tokens", tokens, "--protocol", "windows", "--ctx", "8", "--dump-logits", join(d, "logits"), "--force"]);
    expectError(r, "NOT_A_FILE", [join(d, "logits")]);
  });

  it("to-gguf -o FIFO --force", async () => {
    const out = join(await tempDir(), "out");
    await mkdir(out);
    await fifo(join(out, "model.gguf"));
    expectError(deepcast(argsFor("to-gguf", await fixtureCopy(), out, ["--force"])), "NOT_A_FILE", [join(out, "model.gguf")]);
  });

  it("fp8-to-bf16: an output shard name is a symlink (to the input) --force", async () => {
    const input = await fixtureCopy();
    const before = await hashDir(input);
    const out = join(await tempDir(), "out");
    await mkdir(out);
    await symlink(join(input, "model-00001-of-00003.safetensors"), join(out, "model-00001-of-00003.safetensors"));
    expectError(deepcast(argsFor("fp8-to-bf16", input, out, ["--force"])), "NOT_A_FILE", ["model-00001-of-00003.safetensors"]);
    expect(await hashDir(input)).toEqual(before);
  });

  it("to-demo: config.json in OUT is a folder --force", async () => {
    const out = join(await tempDir(), "out");
    await mkdir(join(out, "config.json"), { recursive: true });
    expectError(deepcast(argsFor("to-demo", await fixtureCopy(), out, ["--force"])), "NOT_A_FILE", [join(out, "config.json")]);
  });
});

describe("11. an option given twice is a usage error", () => {
  it.each([
    ["-o twice", ["-o", "a.gguf", "-o", "b.gguf", "-q", "Q8_0"], "-o"],
    ["-q twice", ["-o", "a.gguf", "-q", "Q8_0", "-q", "Q4_0"], "-q"],
    ["--quant and -q", ["-o", "a.gguf", "--quant", "Q8_0", "-q", "Q4_0"], "--quant"],
  ])("to-gguf %s", async (_n, args, flag) => {
    expectError(deepcast(["to-gguf", await fixtureCopy(), ...args]), "USAGE", [`option ${flag} was given 2 times`]);
  });

  it("validate --reference twice", async () => {
    const r = deepcast(["validate", "x.gguf", "--reference", "a", "--reference", "b", "--tokens", "t.json"]);
    expectError(r, "USAGE", ["--reference"]);
  });

  it("--tensor-type stays repeatable", async () => {
    const r = deepcast(["to-gguf", await fixtureCopy(), "-o", join(await tempDir(), "m.gguf"), "-q", "Q8_0", "--tensor-type", "attn_q_a=q4_0", "--tensor-type", "ffn_up=q4_0", "--dry-run", "--json"]);
    expect(r.status, r.stderr).toBe(0);
  });
});

describe("12. memory stays bounded for hostile inputs", () => {
  it("--imatrix /dev/zero is refused without reading it", async () => {
    const r = deepcast(["to-gguf", await fixtureCopy(), "-o", join(await tempDir(), "m.gguf"), "-q", "Q4_K", "--imatrix", "/dev/zero"]);
    expectError(r, "NOT_A_FILE", ["/dev/zero"]);
  });
});

/** A folder with one hand-written model.safetensors (and the fixture's config for fp8-to-bf16). */
async function handWritten(bytes: Buffer): Promise<string> {
  const d = join(await tempDir(), "in");
  await mkdir(d);
  await writeFile(join(d, "model.safetensors"), bytes);
  return d;
}
function stFile(header: string, data: Buffer): Buffer {
  const h = Buffer.from(header, "latin1");
  const pre = Buffer.alloc(8);
  pre.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([pre, h, data]);
}

describe("12/13. the safetensors header is parsed member by member, strictly", () => {
  const parse = (header: string, data = 4) => {
    const h = Buffer.from(header, "utf8");
    return parseHeader(h, 8 + h.length + data, "x.safetensors");
  };
  const entry = '"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}';
  it("accepts padding, nesting and braces, commas or quotes inside strings", () => {
    const h = parse(`{"__metadata__":{"k":"a,{\\"}]b"},${entry}}      `);
    expect(h.metadata).toEqual({ k: 'a,{"}]b' }); // an escaped quote, a comma and brackets inside a string
    expect(h.tensors.map((t) => t.name)).toEqual(["a"]);
    expect(parse("{}", 0).tensors).toEqual([]);
  });
  it.each([
    ["a duplicate name", `{${entry},${entry}}`, /duplicate entry "a"/],
    ["bytes after the object", `{${entry}}x`, /after the JSON object/],
    ["a trailing comma", `{${entry},}`, /trailing comma/],
    ["an unterminated object", `{${entry}`, /unterminated/],
    ["a bare value", `{${entry},3}`, /malformed safetensors header/],
  ])("refuses %s (BAD_HEADER)", (_n, header, why) => {
    try {
      parse(header);
      expect.unreachable();
    } catch (e) {
      expect((e as DeepcastError).code).toBe("BAD_HEADER");
      expect((e as Error).message).toMatch(why);
    }
  });
});

describe("13. safetensors validation as strict as the Rust crate", () => {
  it.each([
    ["a gap before the first tensor", stFile('{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}', Buffer.alloc(8)), /gap/],
    ["a gap between tensors", stFile('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}}', Buffer.alloc(8)), /gap after a/],
    ["trailing bytes", stFile('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', Buffer.alloc(9)), /5 trailing bytes/],
    ["invalid UTF-8 in the header", stFile('{"\xff\xfe":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', Buffer.alloc(4)), /not valid UTF-8/],
    ["overlapping tensors", stFile('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}', Buffer.alloc(6)), /overlaps/],
  ])("%s: BAD_HEADER", async (_n, bytes, why) => {
    const d = await handWritten(bytes);
    const out = join(await tempDir(), "out");
    const r = deepcast(["fp8-to-bf16", d, out]);
    expectError(r, "BAD_HEADER", [join(d, "model.safetensors"), why]);
    expect(await outputsIn(out)).toEqual([]);
  });

  it("a shard whose data is shorter than its header says: TRUNCATED", async () => {
    const r = deepcast(["fp8-to-bf16", await handWritten(stFile('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', Buffer.alloc(2))), join(await tempDir(), "o")]);
    expectError(r, "TRUNCATED");
  });
});

describe("13. validate checks a GGUF's metadata and a demo config against the tensors present", () => {
  const tokens = async () => {
    const t = join(await tempDir(), "t.json");
    await writeFile(t, "[10, 11, 12, 13, 14, 15, 16, 17, 18]");
    return t;
  };

  it("a GGUF whose deepseek2.block_count (3) disagrees with its 4 layers: CONFIG_MISMATCH naming the file", async () => {
    const d = await tempDir();
    const good = join(d, "m.gguf");
    expect(deepcast(["to-gguf", await fixtureCopy(), "-o", good, "-q", "Q8_0"]).status).toBe(0);
    const b = await readFile(good);
    const at = b.indexOf("deepseek2.block_count") + "deepseek2.block_count".length;
    expect(b.readUInt32LE(at + 4)).toBe(4);
    b.writeUInt32LE(3, at + 4);
    const bad = join(d, "bad.gguf");
    await writeFile(bad, b);
    const r = deepcast(["validate", bad, "--tokens", await tokens(), "--protocol", "windows", "--ctx", "8"]);
    expectError(r, "CONFIG_MISMATCH", [bad, "num_hidden_layers 3", "model.layers.3"]);
  });

  it("demo shards whose config.json says n_layers 5 for 4 layers: CONFIG_MISMATCH naming the config", async () => {
    const demo = join(await tempDir(), "demo");
    expect(deepcast(["to-demo", await fixtureCopy(), demo, "--model-parallel", "1", "--dtype", "bf16"]).status).toBe(0);
    const cfg = JSON.parse(await readFile(join(demo, "config.json"), "utf8")) as Record<string, unknown>;
    await writeFile(join(demo, "config.json"), JSON.stringify({ ...cfg, n_layers: 5 }));
    const r = deepcast(["validate", demo, "--tokens", await tokens(), "--protocol", "windows", "--ctx", "8"]);
    expectError(r, "CONFIG_MISMATCH", [join(demo, "config.json"), "layer 4"]);
  });
});

describe("14. messages that say what happened", () => {
  it.each(["FIFO", "folder"] as const)("a shard that is a %s is NOT_A_FILE, not missing", async (kind) => {
    const input = await fixtureCopy();
    const shard = join(input, "model-00002-of-00003.safetensors");
    await replaceFile(shard, "");
    await (await import("node:fs/promises")).rm(shard);
    if (kind === "FIFO") execFileSync("mkfifo", [shard]);
    else await mkdir(shard);
    const r = deepcast(argsFor("fp8-to-bf16", input, join(await tempDir(), "out")));
    expectError(r, "NOT_A_FILE", [shard, kind === "FIFO" ? "FIFO" : "folder"]);
  });
});

describe("15. a stale run record does not block the next run", () => {
  it("to-gguf: a record from other inputs beside a deleted output", async () => {
    const out = join(await tempDir(), "out");
    await mkdir(out);
    await writeFile(join(out, ".model.gguf.deepcast-run.json"), JSON.stringify({ tool: "deepcast", command: "to-gguf", fingerprint: "0".repeat(64), outputs: { "model.gguf": { size: 1, mtimeMs: 1 } }, complete: true }));
    const r = deepcast(argsFor("to-gguf", await fixtureCopy(), out));
    expect(r.status, r.stderr).toBe(0);
    expect(await exists(join(out, "model.gguf"))).toBe(true);
  });

  it("fp8-to-bf16: a record from other inputs in an otherwise empty folder", async () => {
    const out = join(await tempDir(), "out");
    await mkdir(out);
    await writeFile(join(out, ".deepcast-run.json"), JSON.stringify({ tool: "deepcast", command: "fp8-to-bf16", fingerprint: "1".repeat(64), outputs: {}, complete: false }));
    const r = deepcast(argsFor("fp8-to-bf16", await fixtureCopy(), out));
    expect(r.status, r.stderr).toBe(0);
  });

  it("but a record from other inputs beside an existing output still refuses (RESUME_MISMATCH)", async () => {
    const out = join(await tempDir(), "out");
    await mkdir(out);
    await writeFile(join(out, "model.gguf"), "old");
    await writeFile(join(out, ".model.gguf.deepcast-run.json"), JSON.stringify({ tool: "deepcast", command: "to-gguf", fingerprint: "0".repeat(64), outputs: {}, complete: true }));
    expectError(deepcast(argsFor("to-gguf", await fixtureCopy(), out)), "RESUME_MISMATCH", [join(out, "model.gguf")]);
    expect(await readFile(join(out, "model.gguf"), "utf8")).toBe("old");
  });
});

describe("hand-written safetensors helpers", () => {
  it("round-trip a fixture shard byte for byte (the cases above edit real files)", async () => {
    const input = await fixtureCopy();
    const p = join(input, "model-00001-of-00003.safetensors");
    const { tensors, metadata } = await readShard(p);
    expect(encodeShard(tensors, metadata).equals(await readFile(p))).toBe(true);
  });
});
