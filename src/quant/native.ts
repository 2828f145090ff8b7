/**
 * Loads the C++ addon built by `npm install` (node-gyp). When it is absent (installed as a
 * dependency with install scripts skipped, or DEEPCAST_NATIVE=0), callers fall back to the
 * pure-TypeScript kernels, which are also the oracle in tests.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { PACKAGE_ROOT } from "../formats.js";

type View = ArrayBufferView;

export interface NativeAddon {
  simdLevel(): "scalar" | "avx2";
  setSimd(level: "scalar" | "avx2" | "auto"): boolean;
  hasAvx2(): boolean;
  /** Both return the number of e4m3fn NaN codes (0x7F/0xFF) in src. */
  fp8ToBf16(src: View, rows: number, cols: number, scale: View, dst: View, threads: number): number;
  fp8ToF32(src: View, rows: number, cols: number, scale: View, dst: View, threads: number, bf16Round: boolean): number;
  f32ToBf16(src: View, dst: View, threads: number): void;
  bf16ToF32(src: View, dst: View, threads: number): void;
  f32ToF16(src: View, dst: View, threads: number): void;
  f16ToF32(src: View, dst: View, threads: number): void;
  [kernel: string]: unknown;
}

let cached: NativeAddon | null | undefined;

/** The addon, or null when it is not built or disabled with DEEPCAST_NATIVE=0. */
export function loadNative(): NativeAddon | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (process.env.DEEPCAST_NATIVE === "0") return cached;
  const path = join(PACKAGE_ROOT, "build", "Release", "deepcast_native.node");
  if (!existsSync(path)) return cached;
  cached = createRequire(import.meta.url)(path) as NativeAddon;
  return cached;
}
