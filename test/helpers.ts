import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll } from "vitest";

export const ROOT = resolve(import.meta.dirname, "..");
export const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
export const GOLDEN = join(ROOT, "fixtures", "tiny-dsv3-golden");

export const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** A fresh temporary folder, removed after the test file. */
export async function tempDir(prefix = "deepcast-test-"): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), prefix));
  afterAll(() => rm(d, { recursive: true, force: true }));
  return d;
}
