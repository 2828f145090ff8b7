/**
 * forward's logitsFrom: the positions before it skip the last FFN and the head, and the rows that
 * come back are bit-identical to the same rows of a full pass (per-token work does not depend on
 * which other tokens share the batch).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { forward } from "../src/model/forward.js";
import { HfWeightSource } from "../src/model/weights.js";
import { FIXTURE } from "./helpers.js";

describe("forward with logitsFrom", () => {
  let src: HfWeightSource;
  beforeAll(async () => {
    src = await HfWeightSource.open(FIXTURE);
  });
  afterAll(() => src.close());

  const seq = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (i === 0 ? 0 : (i * 7919 + seed * 104729) % 2048));

  it("returns only the asked positions, bit-identical to the full pass", async () => {
    const sequences = [seq(40, 1), seq(17, 2), seq(33, 3)];
    const from = [20, 0, 32];
    const full = await forward(src, sequences, { threads: 2 });
    const part = await forward(src, sequences, { threads: 2, logitsFrom: from });
    const V = full.vocab;
    expect([...part.offsets]).toEqual([0, 20, 37, 38]);
    for (let b = 0; b < sequences.length; b++) {
      const n = part.offsets[b + 1]! - part.offsets[b]!;
      const want = full.logits.subarray((full.offsets[b]! + from[b]!) * V, (full.offsets[b]! + from[b]! + n) * V);
      const got = part.logits.subarray(part.offsets[b]! * V, part.offsets[b + 1]! * V);
      expect(Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength)), `sequence ${b}`).toBe(true);
    }
  });

  it("rejects a start outside its sequence or a list of the wrong length", async () => {
    await expect(forward(src, [seq(5, 1)], { logitsFrom: [6] })).rejects.toThrow(/outside sequence 0/);
    await expect(forward(src, [seq(5, 1)], { logitsFrom: [1, 2] })).rejects.toThrow(/2 entries for 1 sequences/);
  });
});
