import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, it } from "vitest";

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
