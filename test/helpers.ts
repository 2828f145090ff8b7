import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, expect, it } from "vitest";
import { ggufListing, type GgufListing } from "../fixtures/gguf-listing.js";

export const ROOT = resolve(import.meta.dirname, "..");
export const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
export const GOLDEN = join(ROOT, "fixtures", "tiny-dsv3-golden");

export const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

const made = new Set<string>();
// Registered once, when a test file imports this module: a hook registered inside a running test
// is never called, which is how thousands of fixture copies once piled up in the temp folder.
afterAll(async () => {
  await Promise.all([...made].map((d) => rm(d, { recursive: true, force: true })));
  made.clear();
});

/** A fresh temporary folder, removed after the test file (whether made at collection or in a test). */
export async function tempDir(prefix = "deepcast-test-"): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), prefix));
  made.add(d);
  return d;
}

/**
 * A prerequisite of a golden test (the native addon, a golden file). Returns true when the tests that
 * need it must be skipped, and says why in the output. With the CI environment variable set, a missing
 * prerequisite is a failure, never a silent pass: a test named after it fails.
 */
export function lacking(ok: boolean, why: string): boolean {
  if (ok) return false;
  if (process.env.CI) {
    it(`prerequisite: ${why}`, () => {
      throw new Error(`${why}; CI is set, so the tests that need it fail instead of being skipped`);
    });
  } else {
    console.warn(`skipped: ${why}`);
    it.skip(`skipped: ${why}`, () => undefined);
  }
  return true;
}

/**
 * The GGUF at `path` is the file a listing records (llama-quantize's output, fixtures/llama-cpp-*): the same KVs,
 * tensor infos and tensor bytes (naming the tensors that differ, if any), and the same whole file.
 */
export async function expectGgufListing(path: string, want: GgufListing, label: string): Promise<void> {
  const got = await ggufListing(path);
  expect(got.kv, label).toEqual(want.kv);
  const info = (l: GgufListing) => l.tensors.map((t) => [t.name, t.type, t.ne, t.offset, t.nbytes]);
  expect(info(got), label).toEqual(info(want));
  const shas = new Map(want.tensors.map((t) => [t.name, t.sha256]));
  expect(got.tensors.filter((t) => shas.get(t.name) !== t.sha256).map((t) => `${t.name} (${t.type})`), label).toEqual([]);
  expect([got.file_size, got.file_sha256], label).toEqual([want.file_size, want.file_sha256]);
}
