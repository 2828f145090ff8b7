/**
 * The forward pass's heap settings (native/src/allocator.cc): activations come from a heap that
 * keeps freed blocks and, where the kernel offers transparent huge pages, is marked for them (one
 * fault per 2 MiB, not per 4 KiB); under an address-space limit nothing is reserved beyond what is used.
 * Each case runs in a child process: the settings are process-wide and the heap is the process's.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { loadNative } from "../src/quant/native.js";

const ADDON = resolve(import.meta.dirname, "..", "build", "Release", "deepcast_native.node");
const thp = existsSync("/sys/kernel/mm/transparent_hugepage/enabled")
  ? /\[(\w+)\]/.exec(readFileSync("/sys/kernel/mm/transparent_hugepage/enabled", "utf8"))?.[1] ?? "never"
  : "never";

// The child: keepFreedMemory, then 64 MiB of activations in 4 MiB blocks; prints the [heap] mappings.
const CHILD = `
const nn = require(${JSON.stringify(ADDON)});
const ok = nn.keepFreedMemory(32 * 2 ** 20);
const keep = [];
for (let i = 0; i < 16; i++) keep.push(new Float32Array(2 ** 20).fill(i));
const heaps = require("fs").readFileSync("/proc/self/smaps", "utf8").split(/\\n(?=[0-9a-f]+-[0-9a-f]+ )/)
  .filter((b) => b.includes("[heap]"))
  .map((b) => { const [lo, hi] = b.split(" ")[0].split("-").map((x) => parseInt(x, 16)); return { bytes: hi - lo, huge: / hg( |$)/m.test(b.split("VmFlags:")[1] ?? "") }; });
console.log(JSON.stringify({ ok, heaps, sum: keep.reduce((s, a) => s + a[0], 0) }));
`;

function child(prefix: string[] = []): { ok: boolean; heaps: { bytes: number; huge: boolean }[] } {
  const [cmd, ...args] = [...prefix, process.execPath, "-e", CHILD];
  const r = spawnSync(cmd!, args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

describe.runIf(loadNative() !== null && process.platform === "linux" && existsSync("/proc/self/smaps"))("the forward pass's heap", () => {
  it("is reserved once (1 GiB of address space) and marked for huge pages where the kernel has them", () => {
    const r = child();
    expect(r.ok).toBe(true);
    const big = r.heaps.filter((h) => h.bytes >= 2 ** 30);
    expect(big).toHaveLength(1);
    // the 64 MiB of activations live in it, and with THP on ("madvise" or "always") it is marked
    if (thp !== "never") expect(big[0]!.huge).toBe(true);
  });

  it("reserves nothing under an address-space limit (prlimit --as), where a reservation would count against it", () => {
    const prlimit = spawnSync("prlimit", ["--version"]);
    if (prlimit.status !== 0) return; // no prlimit here: nothing to check it with
    const r = child(["prlimit", `--as=${4 * 2 ** 30}`]);
    expect(r.ok).toBe(true);
    expect(r.heaps.every((h) => h.bytes < 2 ** 30)).toBe(true);
    expect(r.heaps.some((h) => h.huge)).toBe(false);
  });
});
