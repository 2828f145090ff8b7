/**
 * CI validation job: the fixture converted to every main GGUF type, each validated against the FP8
 * original on the fixture's held-out eval text (windows protocol), through the real CLI. Fails when
 * PPL or KLD leaves its band, or when more bits stop meaning less divergence. Prints the table kept
 * in the README.
 *
 *   npx tsx test/e2e/validate-quants.ts [--out table.md]
 */
import { execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

const ROOT = resolve(import.meta.dirname, "..", "..");
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const TEXT = join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.txt");
const REFERENCE_PPL = 42.8542; // DeepSeek's model.py on the FP8 fixture (ppl.json)

/**
 * Bands set from measurements (2026-11-28, this fixture, windows protocol, 7,547 tokens) with room for
 * run-to-run float noise but not for a real regression: about 2x the measured KLD, the measured PPL
 * ratio plus a little, and 1.5-2 points of top-1 agreement.
 */
const BANDS: Record<string, { maxKld: number; maxPplRatio: number; minSameTop: number }> = {
  BF16: { maxKld: 1.5e-4, maxPplRatio: 1.001, minSameTop: 99.5 }, //   measured 6.64e-5, 0.9999, 99.77%
  Q8_0: { maxKld: 8.0e-4, maxPplRatio: 1.001, minSameTop: 98.7 }, //   measured 4.02e-4, 0.9997, 99.22%
  Q6_K: { maxKld: 3.0e-3, maxPplRatio: 1.002, minSameTop: 97.0 }, //   measured 1.53e-3, 1.0000, 98.07%
  Q4_K_M: { maxKld: 1.1e-2, maxPplRatio: 1.005, minSameTop: 93.5 }, // measured 5.38e-3, 1.0017, 94.89%
  Q3_K_M: { maxKld: 2.4e-2, maxPplRatio: 1.008, minSameTop: 90.5 }, // measured 1.17e-2, 1.0033, 92.16%
  Q2_K: { maxKld: 6.5e-2, maxPplRatio: 1.035, minSameTop: 84.0 }, //   measured 3.26e-2, 1.0199, 86.09%
};

const { values } = parseArgs({ options: { out: { type: "string" }, threads: { type: "string", default: "2" } } });
const bin = join(ROOT, "bin", "deepcast.js");
const run = (args: string[]) => execFileSync(process.execPath, [bin, ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });

interface Row { type: string; bpw: number; bytes: number; ppl: number; dPpl: number; kld: number; kld99: number; sameTop: number }

const dir = await mkdtemp(join(tmpdir(), "deepcast-validate-"));
const rows: Row[] = [];
const failures: string[] = [];
try {
  for (const type of Object.keys(BANDS)) {
    const gguf = join(dir, `tiny-${type}.gguf`);
    const plan = JSON.parse(run(["to-gguf", FIXTURE, "-q", type, "-o", gguf, "--dry-run", "--json"])) as { tensors: { ne: number[]; bytes: number }[]; totalBytes: number };
    run(["to-gguf", FIXTURE, "-q", type, "-o", gguf, "--json", "--threads", values.threads!]);
    const v = JSON.parse(run(["validate", gguf, "--reference", FIXTURE, "--text", TEXT, "--protocol", "windows", "--json", "--threads", values.threads!])) as {
      ppl: number; pplBase: number; kld: { meanKld: { value: number }; kld: Record<string, number>; sameTopPPercent: { value: number } };
    };
    const elements = plan.tensors.reduce((a, t) => a + t.ne.reduce((x, y) => x * y, 1), 0);
    const dataBytes = plan.tensors.reduce((a, t) => a + t.bytes, 0);
    const row: Row = {
      type,
      bpw: (dataBytes * 8) / elements,
      bytes: plan.totalBytes,
      ppl: v.ppl,
      dPpl: v.ppl - v.pplBase,
      kld: v.kld.meanKld.value,
      kld99: v.kld.kld["99.0"]!,
      sameTop: v.kld.sameTopPPercent.value,
    };
    rows.push(row);
    if (Math.abs(v.pplBase / REFERENCE_PPL - 1) > 1e-5) failures.push(`reference PPL ${v.pplBase} is not model.py's ${REFERENCE_PPL}`);
    const band = BANDS[type]!;
    if (row.kld > band.maxKld) failures.push(`${type}: mean KLD ${row.kld.toExponential(3)} above ${band.maxKld}`);
    if (row.ppl / v.pplBase > band.maxPplRatio) failures.push(`${type}: PPL ${row.ppl.toFixed(4)} is more than ${band.maxPplRatio}x the reference ${v.pplBase.toFixed(4)}`);
    if (row.sameTop < band.minSameTop) failures.push(`${type}: same top p ${row.sameTop.toFixed(2)}% below ${band.minSameTop}%`);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
// More bits per weight must not mean more divergence.
const byBits = [...rows].sort((a, b) => b.bpw - a.bpw);
for (let i = 1; i < byBits.length; i++) {
  if (byBits[i]!.kld < byBits[i - 1]!.kld) failures.push(`ordering: ${byBits[i]!.type} (${byBits[i]!.bpw.toFixed(2)} bpw) has less KLD than ${byBits[i - 1]!.type} (${byBits[i - 1]!.bpw.toFixed(2)} bpw)`);
}

const table = [
  "| type | bits/weight | size | PPL | ΔPPL | mean KLD | 99% KLD | same top p |",
  "|---|---|---|---|---|---|---|---|",
  ...rows.map((r) => `| ${r.type} | ${r.bpw.toFixed(2)} | ${(r.bytes / 1e6).toFixed(2)} MB | ${r.ppl.toFixed(4)} | ${r.dPpl >= 0 ? "+" : ""}${r.dPpl.toFixed(4)} | ${r.kld.toExponential(2)} | ${r.kld99.toExponential(2)} | ${r.sameTop.toFixed(2)}% |`),
].join("\n");
console.log(`reference: FP8 fixture, PPL ${REFERENCE_PPL} (model.py); eval text ${TEXT.slice(ROOT.length + 1)}, windows of 256\n`);
console.log(table);
if (values.out) await writeFile(values.out, table + "\n");
if (failures.length) {
  console.error(`\nvalidate-quants: ${failures.length} failure(s):\n  ${failures.join("\n  ")}`);
  process.exit(1);
}
console.log("\nvalidate-quants: all within bands");
