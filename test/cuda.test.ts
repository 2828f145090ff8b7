/**
 * The CUDA matmul backend (native/cuda/, native/src/cuda_loader.cc, src/model/backend.ts).
 *
 * Everywhere: build.sh's behaviour without nvcc, the loader's reasons for not using CUDA, and the
 * CPU fallback of selectBackend. Where nvcc is found: libdeepcast_cuda.so builds and exports its
 * C ABI. Where a C++ compiler is found: the GEMM kernel's source, run on CPU threads by
 * native/cuda/emulate.cc, matches a float64 reference. Where an NVIDIA GPU is found: cudaMatmul
 * against the CPU f32Matmul on random data, and the forward pass on the golden batch with the CUDA
 * backend against the CPU backend and model.py's logits. Set DEEPCAST_EXPECT_GPU=1 (as
 * bench/gpu-check.sh does) to fail instead of skipping when no GPU is found.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cudaLibraryPath, cudaNative, selectBackend, type BackendOps, type CudaNative } from "../src/model/backend.js";
import { forward } from "../src/model/forward.js";
import { forwardOps, tsOps } from "../src/model/ops.js";
import { HfWeightSource } from "../src/model/weights.js";
import { FIXTURE, GOLDEN, ROOT, tempDir } from "./helpers.js";
import { random, relError } from "./numeric.js";

const BUILD = join(ROOT, "native", "cuda", "build.sh");
const LIB = cudaLibraryPath();

function which(cmd: string): string | null {
  const r = spawnSync("bash", ["-c", `command -v ${cmd}`], { encoding: "utf8" });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : null;
}

/** nvcc as build.sh finds it: $NVCC if set, else on PATH, else /usr/local/cuda/bin/nvcc. */
function findNvcc(): string | null {
  const env = process.env.NVCC;
  if (env) return which(env);
  return which("nvcc") ?? (existsSync("/usr/local/cuda/bin/nvcc") ? "/usr/local/cuda/bin/nvcc" : null);
}
const nvcc = findNvcc();
const cxx = which("g++") ?? which("clang++");

/** Whether this machine has an NVIDIA GPU (nvidia-smi lists one, or a device node exists). */
function detectGpu(): boolean {
  const r = spawnSync("nvidia-smi", ["-L"], { encoding: "utf8" });
  if (r.status === 0 && /GPU \d+:/.test(r.stdout)) return true;
  return existsSync("/dev/nvidia0");
}
const gpu = detectGpu();
if (process.env.DEEPCAST_EXPECT_GPU === "1" && !gpu) {
  throw new Error("DEEPCAST_EXPECT_GPU=1 but no NVIDIA GPU found (nvidia-smi -L lists none and /dev/nvidia0 is absent)");
}
const loader = cudaNative();
const native: CudaNative | null = "native" in loader ? loader.native : null;

const NO_NVCC = nvcc ? "" : " [skipped: nvcc not found]";
const NO_CXX = cxx ? "" : " [skipped: no C++ compiler]";
const NO_ADDON = native ? "" : ` [skipped: ${"reason" in loader ? loader.reason : ""}]`;
const NO_GPU = gpu ? "" : " [skipped: no NVIDIA GPU on this machine]";

beforeAll(() => {
  // Builds (or finds up to date) the library before anything loads it.
  if (nvcc) execFileSync("bash", [BUILD], { stdio: "pipe", env: { ...process.env, NVCC: nvcc } });
}, 180_000);

describe("libdeepcast_cuda.so", () => {
  it.skipIf(!nvcc)(`build.sh builds it, and it exports the C ABI the loader expects${NO_NVCC}`, () => {
    expect(existsSync(LIB)).toBe(true);
    if (!native) return;
    // Loaded, symbols resolved and ABI version accepted: whatever the reason, it is about the device.
    const reason = native.cudaInit(LIB);
    if (reason !== null) {
      expect(reason).not.toMatch(/cannot load|missing symbol|ABI version/);
      expect(reason).toMatch(/CUDA device/);
    }
  });

  it("build.sh exits 0 with a message when nvcc is missing", () => {
    const r = spawnSync("bash", [BUILD], { encoding: "utf8", env: { ...process.env, NVCC: "/nonexistent/nvcc" } });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/skipping libdeepcast_cuda\.so, the CPU backend is unaffected/);
  });

  it.skipIf(!cxx)(`its GEMM kernel, run on CPU threads (emulate.cc), matches a float64 reference${NO_CXX}`, async () => {
    const exe = join(await tempDir("deepcast-cuda-"), "emulate");
    execFileSync(cxx!, ["-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas", join(ROOT, "native", "cuda", "emulate.cc"), "-o", exe]);
    const r = spawnSync(exe, { encoding: "utf8" });
    expect(r.stdout.trim().split("\n").at(-1), r.stdout + r.stderr).toBe("ok");
    expect(r.status).toBe(0);
  }, 120_000);
});

describe("CUDA loader and backend selection", () => {
  it.skipIf(!native)(`reports a library it cannot load, with its path${NO_ADDON}`, () => {
    const reason = native!.cudaInit("/nonexistent/libdeepcast_cuda.so");
    expect(reason).toMatch(/^cannot load \/nonexistent\/libdeepcast_cuda\.so: .*build it with: bash native\/cuda\/build\.sh/);
    expect(native!.cudaAvailable()).toBe(false);
    expect(native!.cudaDeviceInfo()).toBeNull();
  });

  it.skipIf(!native || gpu)(`reports "no CUDA device" cleanly on a machine without a GPU${NO_ADDON}${gpu ? " [skipped: this machine has a GPU]" : ""}`, () => {
    const reason = native!.cudaInit(LIB);
    if (existsSync(LIB)) expect(reason).toMatch(/^no CUDA device: /);
    else expect(reason).toMatch(/^cannot load /);
    expect(native!.cudaAvailable()).toBe(false);
    const x = new Float32Array(6);
    expect(() => native!.cudaMatmul(x, x, new Float32Array(4), 2, 3, 2)).toThrow(/CUDA is not initialised/);
  });

  it.skipIf(gpu)(`selectBackend falls back to the CPU ops with the reason${gpu ? " [skipped: this machine has a GPU]" : ""}`, () => {
    for (const kind of ["auto", "cuda"] as const) {
      const ops = selectBackend(kind);
      expect(ops.device).toBe("cpu");
      expect(ops.reason).toMatch(/no CUDA device|cannot load|native addon/);
      expect(ops.backend).toBe(forwardOps().backend);
    }
    expect(() => selectBackend("cuda", { required: true })).toThrow(/CUDA backend unavailable: /);
    if (native) expect(() => selectBackend("cuda", { libPath: "/nonexistent/lib.so", required: true })).toThrow(/cannot load \/nonexistent\/lib\.so/);
    // The fallback computes what the CPU ops compute.
    const x = random(5 * 33, 1);
    const w = random(7 * 33, 2);
    const y = new Float32Array(5 * 7);
    const want = new Float32Array(5 * 7);
    selectBackend("auto").matmul(x, w, y, 5, 33, 7, 1);
    forwardOps().matmul(x, w, want, 5, 33, 7, 1);
    expect(y).toEqual(want);
  });

  it.skipIf(gpu)(`validate and imatrix --device: auto runs on the CPU and says why, cuda fails before reading anything${gpu ? " [skipped: this machine has a GPU]" : ""}`, async () => {
    const dir = await tempDir("deepcast-device-");
    const text = join(GOLDEN, "eval", "kjv_eval.txt");
    const cli = (...args: string[]) => spawnSync(process.execPath, [join(ROOT, "bin", "deepcast.js"), ...args], { encoding: "utf8", env: { ...process.env, DEEPCAST_CUDA_LIB: "/nonexistent/libdeepcast_cuda.so" } });
    const v = cli("validate", FIXTURE, "--text", text, "--ctx", "64", "--chunks", "2", "--device", "auto", "--json", "--threads", "1");
    expect(v.status, v.stderr).toBe(0);
    expect(v.stderr).toMatch(/validate: --device auto: running on the CPU \(cannot load \/nonexistent\/libdeepcast_cuda\.so/);
    expect(JSON.parse(v.stdout)).toMatchObject({ device: "cpu", deviceInfo: null });
    const out = join(dir, "im.gguf");
    const i = cli("imatrix", FIXTURE, "--text", text, "--ctx", "64", "--chunks", "2", "--device", "cuda", "-o", out, "--threads", "1");
    expect(i.status).toBe(1);
    expect(i.stderr).toMatch(/^deepcast: error: CUDA backend unavailable: cannot load \/nonexistent\/libdeepcast_cuda\.so.*\[UNSUPPORTED\]$/m);
    expect(i.stderr).not.toMatch(/imatrix: \d+ chunks|\n\s+at /);
    expect(existsSync(out)).toBe(false);
    const c = cli("imatrix", FIXTURE, "--text", text, "--ctx", "64", "--chunks", "2", "--device", "cpu", "-o", out, "--json", "--threads", "1");
    expect(c.status, c.stderr).toBe(0);
    expect(c.stderr).not.toMatch(/--device/);
    expect(JSON.parse(c.stdout)).toMatchObject({ device: "cpu", chunks: 2 });
  });

  it("selectBackend('cpu') is the CPU ops, and rejects unknown kinds", () => {
    const ops = selectBackend("cpu", { cpu: tsOps });
    expect(ops).toMatchObject({ device: "cpu", reason: null, deviceInfo: null, backend: "ts" });
    expect(() => selectBackend("tpu" as "cpu")).toThrow(/unknown backend "tpu"/);
  });
});

describe.skipIf(!gpu)(`on the GPU${NO_GPU}`, () => {
  let ops: BackendOps;
  beforeAll(() => {
    if (!native) throw new Error("reason" in loader ? loader.reason : "no CUDA loader");
    ops = selectBackend("cuda", { required: true });
    console.log(`CUDA device: ${ops.deviceInfo}`);
  });
  afterAll(() => native?.cudaRelease());

  it("cudaMatmul equals the CPU f32Matmul on random data (relative error < 1e-5), strided y included", () => {
    const cpu = forwardOps();
    const shapes: [number, number, number, number][] = [
      // tokens, in, out, ldy
      [1, 1, 1, 1], [1, 7, 3, 3], [3, 17, 5, 9], [64, 64, 64, 64], [37, 256, 130, 130], [512, 256, 2048, 2048],
      [128, 1000, 333, 500], [300, 7168, 65, 65], [2, 2048, 4096, 4096],
    ];
    for (const [T, K, N, ldy] of shapes) {
      const x = random(T * K, T * 7 + K);
      const w = random(N * K, N * 13 + K);
      const got = new Float32Array((T - 1) * ldy + N).fill(NaN);
      const want = new Float32Array((T - 1) * ldy + N).fill(NaN);
      native!.cudaMatmul(x, w, got, T, K, N, ldy);
      cpu.matmul(x, w, want, T, K, N, 1, ldy);
      // Rows' padding untouched, values close.
      const pick = (a: Float32Array) => Float32Array.from({ length: T * N }, (_, i) => a[Math.floor(i / N) * ldy + (i % N)]!);
      for (let t = 0; t + 1 < T; t++) for (let o = N; o < ldy; o++) expect(Number.isNaN(got[t * ldy + o]!)).toBe(true);
      const e = relError(pick(got), pick(want));
      expect(e, `T=${T} in=${K} out=${N} ldy=${ldy}: rel ${e}`).toBeLessThan(1e-5);
    }
  });

  it("the forward pass on the golden batch with the CUDA backend matches the CPU backend and model.py (1e-4)", async () => {
    const sequences = (JSON.parse(readFileSync(join(GOLDEN, "logits", "tokens.json"), "utf8")) as { sequences: number[][] }).sequences;
    const buf = readFileSync(join(GOLDEN, "logits", "logits.fp8-dequant.f32.bin"));
    const golden = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
    const src = await HfWeightSource.open(FIXTURE, { threads: 2 });
    try {
      const gpuRun = await forward(src, sequences, { threads: 4, ops });
      const cpuRun = await forward(src, sequences, { threads: 4, ops: selectBackend("cpu") });
      expect(gpuRun.logits.length).toBe(golden.length);
      const vsGolden = relError(gpuRun.logits, golden);
      const vsCpu = relError(gpuRun.logits, cpuRun.logits);
      console.log(`CUDA forward: rel error vs model.py ${vsGolden.toExponential(3)}, vs CPU ${vsCpu.toExponential(3)}`);
      expect(vsGolden).toBeLessThanOrEqual(1e-4);
      expect(vsCpu).toBeLessThanOrEqual(1e-4);
      // Per position too (each row of 2048 logits against its own max), as test/forward.test.ts does.
      const V = gpuRun.vocab;
      for (let r = 0; r < golden.length / V; r++) {
        expect(relError(gpuRun.logits.subarray(r * V, (r + 1) * V), golden.subarray(r * V, (r + 1) * V))).toBeLessThanOrEqual(1e-4);
      }
    } finally {
      await src.close();
    }
  }, 120_000);
});
