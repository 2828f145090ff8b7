/**
 * What `to-gguf --target-measure` scores is what to-gguf writes: a planned GGUF served from memory
 * (convert/planned-gguf.ts) holds the same bytes, tensor for tensor, as the file runToGguf writes for
 * the same types and imatrix, and the KLD probe (model/kld-probe.ts) gives validate's mean KLD.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PlannedGguf } from "../src/convert/planned-gguf.js";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { GgufReader } from "../src/io/gguf-reader.js";
import { readImatrix } from "../src/io/imatrix.js";
import { LocalSource } from "../src/io/source.js";
import { planProtocol } from "../src/model/eval-protocol.js";
import { GgufWeightSource } from "../src/model/gguf-weights.js";
import { KldProbe } from "../src/model/kld-probe.js";
import { loadTokenizer } from "../src/model/tokenize.js";
import { validate } from "../src/model/validate.js";
import { HfWeightSource } from "../src/model/weights.js";
import { kernels } from "../src/quant/kernels.js";
import { FIXTURE, GOLDEN, ROOT, sha256, tempDir } from "./helpers.js";

const IMATRIX = join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3.imatrix.gguf");

describe("PlannedGguf and KldProbe", () => {
  it("serve the bytes runToGguf writes, and score them as validate does", async () => {
    const dir = await tempDir();
    const out = join(dir, "mixed.gguf");
    const source = new LocalSource(FIXTURE);
    const imatrix = await readImatrix(IMATRIX);
    // K-quants, IQ types with the imatrix (experts per matrix, attn_k_b per head), BF16 and F32 in one file
    const tensorTypes = ["blk\\.1\\.ffn_up_exps=IQ2_XXS", "blk\\.2\\.ffn_down_exps=IQ3_S", "token_embd=Q2_K", "blk\\.0\\.attn_q_a=BF16", "blk\\.3\\.attn_v_b=IQ4_NL", "output=Q6_K"];
    const plan = await planToGguf(source, out, { ftype: "Q4_K_M", imatrix, tensorTypes });
    await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });

    // the store starts from another plan (as --target-measure's does) and takes the file's types
    const base = await planToGguf(source, join(dir, "base.gguf"), { ftype: "Q8_0", imatrix, dryRun: true });
    const planned = new PlannedGguf(source, base, { kernels: kernels(), threads: 2 });
    const file = await GgufReader.open(out);
    try {
      const store = planned.store(new Map(file.tensors.map((t) => [t.name, t.type])));
      expect(store.tensors.map((t) => [t.name, t.type.name, t.nbytes])).toEqual(file.tensors.map((t) => [t.name, t.type.name, t.nbytes]));
      expect(new Set(file.tensors.map((t) => t.type.name))).toEqual(new Set(["F32", "Q4_K", "Q6_K", "Q2_K", "IQ2_XXS", "IQ3_S", "IQ4_NL", "BF16", "Q5_0", "Q8_0"].filter((n) => file.tensors.some((t) => t.type.name === n))));
      for (const t of file.tensors) {
        const a = new Uint8Array(t.nbytes);
        const b = new Uint8Array(t.nbytes);
        await file.read(t, 0, a);
        await store.read(store.tensor(t.name)!, 0, b);
        expect(sha256(b), t.name).toBe(sha256(a));
      }
      // a part read (one expert of a stack) is the same slice
      const exps = store.tensor("blk.1.ffn_up_exps.weight")!;
      const per = exps.nbytes / exps.ne[2]!;
      const part = new Uint8Array(per);
      const whole = new Uint8Array(exps.nbytes);
      await store.read(exps, 5 * per, part);
      await file.read(file.tensor(exps.name)!, 0, whole);
      expect(sha256(part)).toBe(sha256(whole.subarray(5 * per, 6 * per)));

      const tok = await loadTokenizer(FIXTURE);
      const ids = tok.encode(await readFile(join(GOLDEN, "eval", "kjv_eval.txt"), "utf8"));
      const { sequences } = planProtocol(ids, { protocol: "llama", ctx: 128, chunks: 6, bos: tok.bosId, addBos: tok.addBos });
      const reference = await HfWeightSource.open(FIXTURE, { threads: 2 });
      const fromFile = await GgufWeightSource.open(out, { threads: 2 });
      const fromStore = await GgufWeightSource.fromStore(planned.store(new Map(file.tensors.map((t) => [t.name, t.type]))), { threads: 2 });
      try {
        const probe = await KldProbe.create(reference, sequences, { threads: 2, batchSequences: 4 });
        expect(probe.positions).toBe(6 * 63);
        const viaStore = await probe.meanKld(fromStore);
        expect(await probe.meanKld(fromFile)).toBe(viaStore);
        const v = await validate(fromFile, reference, sequences, { threads: 2 });
        expect(viaStore).toBeGreaterThan(1e-4);
        expect(Math.abs(viaStore - v.kld!.meanKld.value) / v.kld!.meanKld.value).toBeLessThan(1e-6);
      } finally {
        await Promise.all([reference.close(), fromFile.close(), fromStore.close()]);
      }
    } finally {
      await file.close();
      await planned.close();
    }
  }, 180_000);
});
