/**
 * The tokenizer of a GGUF alone (tokenizer.ggml.* metadata) against the checkpoint's own
 * tokenizer.json: the same ids on the fixture's evaluation text (kjv_eval.ids.json) and on text that
 * exercises every pre-tokenizer branch and the added tokens; clear errors on metadata it cannot use.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { GgufReader } from "../src/io/gguf-reader.js";
import type { GgufKV } from "../src/io/gguf-kv.js";
import { LocalSource } from "../src/io/source.js";
import { findTokenizer, openTokenizer } from "../src/model/open-tokenizer.js";
import { loadTokenizer } from "../src/model/tokenize.js";
import { loadGgufTokenizer, tokenizerFilesFromGguf } from "../src/model/tokenizer-from-gguf.js";
import { kernels } from "../src/quant/kernels.js";
import { FIXTURE, GOLDEN, tempDir } from "./helpers.js";

const EVAL_TEXT = readFileSync(join(GOLDEN, "eval", "kjv_eval.txt"), "utf8");
const evalIds = (JSON.parse(readFileSync(join(GOLDEN, "eval", "kjv_eval.ids.json"), "utf8")) as { ids: number[] }).ids;
// Digits (1-3 grouping), CJK/kana runs, punctuation+letters, newlines and runs of spaces, accents,
// emoji (multi-byte), the added tokens (special and not) inside words.
const TRICKY = "Hello,world!! 1234567 日本語のテキスト カタカナ\n\n\n  \t x<｜User｜>y <｜begin▁of▁sentence｜>ü café 😀 don't ...\r\n end   ";

let gguf: string;
beforeAll(async () => {
  // to-gguf's BF16 output is byte-identical to llama.cpp's convert_hf_to_gguf.py (test/to-gguf.test.ts).
  gguf = join(await tempDir(), "tiny-BF16.gguf");
  const plan = await planToGguf(new LocalSource(FIXTURE), gguf, { ftype: "BF16" });
  await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
}, 120_000);

describe("tokenizer rebuilt from GGUF metadata", () => {
  it("gives kjv_eval.ids.json from the evaluation text, BOS 0 added, like tokenizer.json", async () => {
    const tok = await loadGgufTokenizer(gguf);
    expect(tok.encode(EVAL_TEXT)).toEqual(evalIds);
    expect(tok.bosId).toBe(0);
    expect(tok.addBos).toBe(true);
    expect(tok.description).toMatch(/tiny-BF16\.gguf \(tokenizer\.ggml\.\* metadata\)/);
  });

  it("agrees with tokenizer.json on every pre-tokenizer branch and the added tokens, and decodes back", async () => {
    const g = await loadGgufTokenizer(gguf);
    const h = await loadTokenizer(FIXTURE);
    const ids = g.encode(TRICKY);
    expect(ids).toEqual(h.encode(TRICKY));
    expect(ids).toContain(0); // <｜begin▁of▁sentence｜> matched as one token
    expect(ids).toContain(2046); // <｜User｜>
    expect(g.decode(ids)).toBe(TRICKY);
    expect(g.encode(EVAL_TEXT.slice(0, 5000).toUpperCase())).toEqual(h.encode(EVAL_TEXT.slice(0, 5000).toUpperCase()));
  });

  it("openTokenizer/findTokenizer: tokenizer.json beside a model wins, a lone GGUF gives its own, else a clear error", async () => {
    expect((await openTokenizer(FIXTURE)).description).toBe(join(FIXTURE, "tokenizer.json"));
    expect((await openTokenizer(gguf)).description).toMatch(/tiny-BF16\.gguf/);
    expect((await findTokenizer([gguf, FIXTURE]))!.description).toBe(join(FIXTURE, "tokenizer.json"));
    expect(await findTokenizer([join(GOLDEN, "logits")])).toBeNull();
    await expect(openTokenizer(join(GOLDEN, "logits"))).rejects.toThrow(/no tokenizer\.json here.*logits/);
  });

  it("refuses metadata it cannot rebuild, naming the file and the key", async () => {
    const reader = await GgufReader.open(gguf);
    const kvs = new Map(reader.kvs.map((k) => [k.key, k]));
    await reader.close();
    const edited = (over: Record<string, GgufKV | null>) => (key: string) => (key in over ? over[key] ?? undefined : kvs.get(key));
    const str = (key: string, value: string): GgufKV => ({ key, type: "STRING", value });
    expect(() => tokenizerFilesFromGguf(edited({ "tokenizer.ggml.pre": str("tokenizer.ggml.pre", "qwen2") }), "m.gguf")).toThrow(/tokenizer\.ggml\.pre is "qwen2".*deepseek-v3.*m\.gguf/);
    expect(() => tokenizerFilesFromGguf(edited({ "tokenizer.ggml.pre": null }), "m.gguf")).toThrow(/tokenizer\.ggml\.pre is missing/);
    expect(() => tokenizerFilesFromGguf(edited({ "tokenizer.ggml.model": str("tokenizer.ggml.model", "llama") }), "m.gguf")).toThrow(/only "gpt2"/);
    expect(() => tokenizerFilesFromGguf(edited({ "tokenizer.ggml.model": null }), "m.gguf")).toThrow(/no tokenizer\.ggml\.model/);
    expect(() => tokenizerFilesFromGguf(edited({ "tokenizer.ggml.merges": null }), "m.gguf")).toThrow(/no tokenizer\.ggml\.merges.*m\.gguf/);
    expect(() => tokenizerFilesFromGguf(edited({ "tokenizer.ggml.token_type": { key: "tokenizer.ggml.token_type", type: "ARRAY", elementType: "INT32", value: [1, 1] } }), "m.gguf"))
      .toThrow(/token_type has 2 entries, tokenizer\.ggml\.tokens 2048/);
    expect(() => tokenizerFilesFromGguf(edited({ "tokenizer.ggml.bos_token_id": { key: "tokenizer.ggml.bos_token_id", type: "UINT32", value: 5000 } }), "m.gguf"))
      .toThrow(/bos_token_id is 5000, outside the 2048 tokens/);
    // add_bos_token absent: llama.cpp's default for the deepseek-v3 pre-tokenizer is not to add BOS.
    const files = tokenizerFilesFromGguf(edited({ "tokenizer.ggml.add_bos_token": null }), "m.gguf");
    expect(files.tokenizerConfig.add_bos_token).toBe(false);
  });
});
