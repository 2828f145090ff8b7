/**
 * The committed llama-quantize results for the V3.2 and V4 fixtures (fixtures/llama-cpp-dsv4, made by
 * make.ts there) and the tests both to-gguf suites run against them: the converted BF16 GGUF is the file
 * llama-quantize was given, and each of our quantized outputs equals llama-quantize's listing of that type.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { expect, it } from "vitest";
import type { GgufListing } from "../fixtures/gguf-listing.js";
import type { Manifest } from "../fixtures/llama-cpp-dsv4/make.js";
import { expectGgufListing, ROOT, sha256 } from "./helpers.js";

export const LLAMA_DSV4 = join(ROOT, "fixtures", "llama-cpp-dsv4");

/** A JSON file of fixtures/llama-cpp-dsv4 (the manifest, a listing). */
export const llamaFixture = async <T>(name: string): Promise<T> => JSON.parse(await readFile(join(LLAMA_DSV4, name), "utf8")) as T;

/** Registers, inside the caller's describe: the input check, then one test per quantization type. */
export function llamaQuantizeListingTests(o: {
  /** The converted file's key in manifest.json `inputs` (v32-bf16.gguf, v4-bf16.gguf). */
  input: string;
  /** Our converted BF16 GGUF (read when the test runs). */
  converted: () => string;
  types: readonly string[];
  /** The listing file of a type. */
  listing: (ftype: string) => string;
  /** Writes our GGUF of a type and returns its path. */
  convert: (ftype: string) => Promise<string>;
}): void {
  it("the converted BF16 is the file llama-quantize was given", async () => {
    const want = (await llamaFixture<Manifest>("manifest.json")).inputs[o.input]!;
    const got = await readFile(o.converted());
    expect([got.length, sha256(got)], "changed: rerun fixtures/llama-cpp-dsv4/make.ts").toEqual([want.size, want.sha256]);
  });
  for (const ftype of o.types) {
    it(ftype, async () => {
      await expectGgufListing(await o.convert(ftype), await llamaFixture<GgufListing>(o.listing(ftype)), ftype);
    }, 120_000);
  }
}
