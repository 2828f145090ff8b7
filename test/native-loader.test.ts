/**
 * The addon loader: a present addon that does not load, comes from another version or lacks an
 * entry point is an error naming the cause and the fix, never a silent fallback to TypeScript.
 */
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepcastError } from "../src/errors.js";
import { ADDON_ENTRY_POINTS } from "../src/quant/addon-types.js";
import { ADDON_PATH, loadAddon, loadNative } from "../src/quant/native.js";
import { ROOT } from "./helpers.js";

const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "deepcast-native-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function failure(path: string): DeepcastError {
  try {
    loadAddon(path);
  } catch (e) {
    expect(e).toBeInstanceOf(DeepcastError);
    return e as DeepcastError;
  }
  throw new Error("loadAddon did not throw");
}

/** A CommonJS stand-in for the addon exporting `names`, `version()` returning `version`. */
async function fakeAddon(name: string, version: string | null, names: readonly string[]): Promise<string> {
  const path = join(dir, name);
  const fns = names.filter((n) => n !== "version").map((n) => `exports.${n} = () => undefined;`);
  if (version !== null) fns.push(`exports.version = () => ${JSON.stringify(version)};`);
  await writeFile(path, fns.join("\n") + "\n");
  return path;
}

describe("native addon loader", () => {
  it.skipIf(process.env.DEEPCAST_NATIVE === "0")("loads the built addon, whose version is the package's and which has every entry point", () => {
    const n = loadNative();
    expect(n, `${ADDON_PATH} is built by npm install`).not.toBeNull();
    expect(n!.version()).toBe(VERSION);
    for (const k of ADDON_ENTRY_POINTS) expect(typeof n![k], k).toBe("function");
  });

  it("a file that is not a loadable addon: the cause and the fix", async () => {
    const path = join(dir, "broken.node");
    await writeFile(path, Buffer.from("\x7fELF not really a shared object"));
    const e = failure(path);
    expect(e.code).toBe("NATIVE_UNAVAILABLE");
    expect(e.file).toBe(ADDON_PATH);
    expect(e.message).toMatch(/is there but does not load \(.+\)/);
    expect(e.message).toMatch(/npm rebuild deepcast/);
    expect(e.message).toMatch(/DEEPCAST_NATIVE=0/);
  });

  it("an addon from another version, or from before versions, is refused", async () => {
    const other = failure(await fakeAddon("old.cjs", "0.0.1", ADDON_ENTRY_POINTS));
    expect(other.code).toBe("NATIVE_UNAVAILABLE");
    expect(other.message).toContain(`was built from deepcast 0.0.1, this is ${VERSION}`);
    const none = failure(await fakeAddon("unversioned.cjs", null, ADDON_ENTRY_POINTS));
    expect(none.message).toMatch(/no version/);
  });

  it("an addon that lacks an entry point is refused, naming it", async () => {
    const e = failure(await fakeAddon("stale.cjs", VERSION, ADDON_ENTRY_POINTS.filter((k) => k !== "ggmlRowBytes" && k !== "cudaInit")));
    expect(e.code).toBe("NATIVE_UNAVAILABLE");
    expect(e.message).toMatch(/lacks ggmlRowBytes, cudaInit/);
  });

  it("a complete addon of this version loads", async () => {
    const n = loadAddon(await fakeAddon("ok.cjs", VERSION, ADDON_ENTRY_POINTS));
    expect(n.version()).toBe(VERSION);
  });
});
