/**
 * Loads the C++ addon that `npm install` builds (node-gyp) into build/Release/deepcast_native.node.
 *
 * - DEEPCAST_NATIVE=0: not loaded (the explicit opt-out); so is an addon that was never built
 *   (installed with scripts skipped). Element kernels and the forward pass then use their TypeScript
 *   twins; every quantized ggml type needs the addon and fails with NATIVE_UNAVAILABLE.
 * - The file is there but does not load (wrong platform or Node ABI, a missing library), comes from
 *   another package version, or lacks an entry point: a DeepcastError (NATIVE_UNAVAILABLE) with the
 *   cause and the fix, never a silent fallback.
 */
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { DeepcastError } from "../errors.js";
import { PACKAGE_ROOT } from "../formats/load.js";
import { ADDON_ENTRY_POINTS, type AddonTypes } from "./addon-types.js";

export type NativeAddon = AddonTypes;

/** Where node-gyp puts the addon. */
export const ADDON_PATH = join(PACKAGE_ROOT, "build", "Release", "deepcast_native.node");

const REBUILD = "rebuild it with `npm rebuild deepcast` (in a checkout: `npm run build`), or set DEEPCAST_NATIVE=0 to run without it (quantized GGUF types then fail)";

function packageVersion(): string {
  return (JSON.parse(readFileSync(join(PACKAGE_ROOT, "package.json"), "utf8")) as { version: string }).version;
}

function loadFailure(why: string, cause?: unknown): DeepcastError {
  return new DeepcastError(`the native addon ${why}; ${REBUILD}`, { file: ADDON_PATH, code: "NATIVE_UNAVAILABLE" }, { cause });
}

/** Loads and checks the addon at `path` (throws a DeepcastError naming the cause and the fix). */
export function loadAddon(path: string = ADDON_PATH): NativeAddon {
  let mod: Partial<Record<keyof AddonTypes, unknown>>;
  try {
    mod = createRequire(import.meta.url)(path) as typeof mod;
  } catch (e) {
    const msg = ((e as Error).message ?? String(e)).split("\n")[0];
    throw loadFailure(`is there but does not load (${msg}): it was built for another platform or Node.js version, or a library it needs is missing`, e);
  }
  const version = typeof mod.version === "function" ? (mod.version as () => unknown)() : undefined;
  const expected = packageVersion();
  if (version !== expected) {
    throw loadFailure(`was built from deepcast ${typeof version === "string" ? version : "before 0.1.0 (no version)"}, this is ${expected}`);
  }
  const missing = ADDON_ENTRY_POINTS.filter((k) => typeof mod[k] !== "function");
  if (missing.length) throw loadFailure(`lacks ${missing.join(", ")}: it is older than these sources`);
  return mod as NativeAddon;
}

let cached: NativeAddon | null | undefined;
let failure: DeepcastError | undefined;

/**
 * The addon, or null when it is disabled with DEEPCAST_NATIVE=0 or not built. A present addon that
 * fails to load throws (every call, not only the first).
 */
export function loadNative(): NativeAddon | null {
  if (failure) throw failure;
  if (cached !== undefined) return cached;
  if (process.env.DEEPCAST_NATIVE === "0" || !existsSync(ADDON_PATH)) {
    cached = null;
    return cached;
  }
  try {
    cached = loadAddon();
  } catch (e) {
    failure = e as DeepcastError;
    throw e;
  }
  return cached;
}

/** Why the addon is not in use, for messages: null when it is loaded. */
export function nativeMissingReason(): string | null {
  if (loadNative()) return null;
  return process.env.DEEPCAST_NATIVE === "0"
    ? "the native addon is disabled (DEEPCAST_NATIVE=0)"
    : `the native addon is not built (${ADDON_PATH}); build it with \`npm rebuild deepcast\` (in a checkout: \`npm run build\`)`;
}
