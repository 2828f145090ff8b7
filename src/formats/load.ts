/**
 * The package's declarative data in formats/ (name maps, type tables, quant mixes), read once. The
 * path is relative to this module, which sits two levels below the package root (src/formats/ and
 * dist/formats/ alike).
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const PACKAGE_ROOT = fileURLToPath(new URL("../..", import.meta.url));

const cache = new Map<string, unknown>();

export function readFormat<T>(name: string): T {
  let v = cache.get(name);
  if (v === undefined) {
    v = JSON.parse(readFileSync(new URL(`../../formats/${name}`, import.meta.url), "utf8"));
    cache.set(name, v);
  }
  return v as T;
}
