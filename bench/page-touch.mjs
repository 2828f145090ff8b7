/**
 * What first-touching fresh memory costs on this machine, with and without the forward pass's heap
 * settings (native/src/allocator.cc: heap reserved once and marked for transparent huge pages):
 *
 *   node bench/page-touch.mjs [MB=200]
 *
 * Each mode runs in its own process (the settings are process-wide): "4k" writes one float per 4 KiB
 * page of fresh arrays allocated as usual; "heap" calls keepFreedMemory first, then does the same.
 * Prints milliseconds and microseconds per 4 KiB page. On the 2-vCPU VM of bench/README.md the first is
 * ~12 us per page; the second depends on whether the host still backs the huge pages.
 */
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const mb = Number(process.argv[2] ?? 200);
const mode = process.argv[3];
if (!mode) {
  for (const m of ["4k", "heap"]) {
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), String(mb), m], { encoding: "utf8" });
    process.stdout.write(r.stdout + r.stderr);
  }
} else {
  if (mode === "heap") {
    const nn = createRequire(import.meta.url)("../build/Release/deepcast_native.node");
    nn.keepFreedMemory(32 * 2 ** 20);
  }
  // 16 MiB arrays: below the 32 MiB mmap threshold the heap mode sets, so they come from the heap
  const arrays = Math.ceil((mb * 2 ** 20) / 2 ** 24);
  const keep = [];
  const t0 = performance.now();
  for (let i = 0; i < arrays; i++) {
    const a = new Float32Array(2 ** 22);
    for (let j = 0; j < a.length; j += 1024) a[j] = 1;
    keep.push(a);
  }
  const ms = performance.now() - t0;
  const pages = (arrays * 2 ** 24) / 4096;
  console.log(`${mode}: ${arrays * 16} MiB first touched in ${ms.toFixed(0)} ms, ${((ms * 1000) / pages).toFixed(2)} us per 4 KiB page`);
}
