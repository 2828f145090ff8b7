/**
 * imatrix for DeepSeek-V4: the collector files each V4 weight's input under the GGUF tensor, layout and
 * count llama-imatrix uses on a deepseek4 model (fixtures/llama-cpp-tiny-dsv4-imatrix: its run on our
 * BF16 GGUF of tiny-dsv4).
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { parseImatrix, type Imatrix } from "../src/io/imatrix.js";
import { LocalSource } from "../src/io/source.js";
import { GgufWeightSource } from "../src/model/gguf-weights.js";
import { ImatrixCollector } from "../src/model/imatrix-collect.js";
import { kernels } from "../src/quant/kernels.js";
import { ROOT, sha256, tempDir } from "./helpers.js";

const V4 = join(ROOT, "fixtures", "tiny-dsv4");
const ORACLE = join(ROOT, "fixtures", "llama-cpp-tiny-dsv4-imatrix");
/** sha256 of `to-gguf fixtures/tiny-dsv4 -q BF16`, the model llama-imatrix ran (README). */
const GGUF_SHA = "67964e22a08cadcfab652b58122d1577bb3a58342b6d423febbe4726bca49abc";

let gguf: string;
let ref: Imatrix;

beforeAll(async () => {
  gguf = join(await tempDir("deepcast-imatrix-dsv4-"), "tiny-dsv4-BF16.gguf");
  const plan = await planToGguf(new LocalSource(V4), gguf, { ftype: "BF16" });
  await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
  ref = parseImatrix(await readFile(join(ORACLE, "tiny-dsv4.imatrix.gguf")), "tiny-dsv4.imatrix.gguf");
});

describe("ImatrixCollector on DeepSeek-V4", () => {
  it("the oracle was made from this conversion (else rerun fixtures/llama-cpp-tiny-dsv4-imatrix/README.md)", async () => {
    expect(sha256(await readFile(gguf))).toBe(GGUF_SHA);
    expect(ref.entries.size).toBe(70);
    expect([ref.chunkCount, ref.chunkSize]).toEqual([8, 256]);
  });

  it("files every matrix input under llama-imatrix's names, sizes and counts; ignores what it never collects", async () => {
    const src = await GgufWeightSource.open(gguf);
    const cfg = src.config;
    const c = new ImatrixCollector(cfg);
    const rows = 3;
    try {
      // Every weight the model has, its input as the forward pass reports it: [rows, in], wo_a's the whole
      // attention output (o_groups x its columns), each routed expert once.
      for (const name of src.hfNames()) {
        const shape = src.shape(name);
        const cols = shape.length === 2 ? shape[1]! * (name.endsWith(".attn.wo_a.weight") ? cfg.v4!.oGroups : 1) : shape[0]!;
        c.input(name, Float32Array.from({ length: rows * cols }, (_, i) => (i % 5) - 2), rows, cols);
      }
    } finally {
      await src.close();
    }
    const raw = ref.raw!;
    expect([...c.stats.keys()].sort()).toEqual([...raw.keys()].sort());
    for (const [name, e] of c.stats) {
      const r = raw.get(name)!;
      expect([e.sums.length, e.counts.length], name).toEqual([r.sums.length, r.counts.length]);
      // llama-imatrix: one count per dense (or grouped) weight = every token; per expert for _exps
      if (r.counts.length === 1) expect(r.counts[0], name).toBe(ref.chunkCount * ref.chunkSize);
      expect(Array.from(e.counts), name).toEqual(Array.from({ length: r.counts.length }, () => rows));
    }
    // the grouped wo_a: [o_groups x H*head_dim/o_groups] sums, group after group, one count
    const woa = c.stats.get("blk.2.attn_output_a.weight")!;
    expect([woa.cols, woa.sums.length]).toEqual([256, 512]);
    const col = (j: number) => [0, 1, 2].reduce((s, r) => s + (((r * 512 + j) % 5) - 2) ** 2, 0);
    expect(Array.from(woa.sums.subarray(300, 304))).toEqual([300, 301, 302, 303].map(col));
    // routed experts: every token reaches top-k of them in each layer
    for (const l of [0, 1, 2, 3]) {
      const counts = Array.from(raw.get(`blk.${l}.ffn_down_exps.weight`)!.counts);
      expect(counts.reduce((a, b) => a + b, 0)).toBe(2 * ref.chunkCount * ref.chunkSize);
    }
  });

  it("output.weight only with processOutput, from head.weight; never output_hc_fn", async () => {
    const src = await GgufWeightSource.open(gguf);
    try {
      const x = new Float32Array(2 * 1024).fill(1);
      const plain = new ImatrixCollector(src.config);
      plain.input("head.weight", x, 2, 256);
      plain.input("hc_head_fn", x, 2, 1024);
      expect(plain.stats.size).toBe(0);
      const withOutput = new ImatrixCollector(src.config, { processOutput: true });
      withOutput.input("head.weight", x, 2, 256);
      withOutput.input("hc_head_fn", x, 2, 1024);
      expect([...withOutput.stats.keys()]).toEqual(["output.weight"]);
    } finally {
      await src.close();
    }
  });
});
