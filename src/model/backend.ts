/**
 * Where the forward pass's matmuls run: on the CPU (the native or TypeScript kernels of ops.ts)
 * or on an NVIDIA GPU through build/cuda/libdeepcast_cuda.so (native/cuda/, built by
 * `bash native/cuda/build.sh`), which the addon opens with dlopen at run time.
 *
 *   const ops = selectBackend("auto");             // CUDA when usable, else the CPU ops
 *   if (ops.reason) console.warn(`CPU backend: ${ops.reason}`);
 *   await forward(src, sequences, { ops });
 *
 * Only matmul moves to the GPU: x and W are uploaded on every call (the forward streams one
 * layer's weights at a time and uses each once) and y comes back before the call returns, so the
 * rest of the pass (attention, SwiGLU, norms, routing) is unchanged and stays on the CPU.
 */
import { join } from "node:path";
import { DeepcastError } from "../errors.js";
import { PACKAGE_ROOT } from "../formats/load.js";
import { loadNative, nativeMissingReason, type NativeAddon } from "../quant/native.js";
import { forwardOps, type ForwardOps } from "./ops.js";

/** The CUDA loader's entry points (native/src/cuda_loader.cc). */
export type CudaNative = Pick<NativeAddon, "cudaInit" | "cudaAvailable" | "cudaDeviceInfo" | "cudaMatmul" | "cudaLastTimes" | "cudaRelease">;

export type BackendKind = "cpu" | "cuda" | "auto";

/** ForwardOps with where its matmul runs; pass it as `forward(..., { ops })`. */
export interface BackendOps extends ForwardOps {
  /** Where matmul runs. */
  readonly device: "cpu" | "cuda";
  /** Why the CPU was chosen although CUDA was asked for ("cuda" or "auto"); null otherwise. */
  readonly reason: string | null;
  /** The GPU, when device is "cuda". */
  readonly deviceInfo: string | null;
}

export interface SelectBackendOptions {
  /** The CUDA library (default: $DEEPCAST_CUDA_LIB, else build/cuda/libdeepcast_cuda.so). */
  libPath?: string;
  /** CUDA device index (default 0). */
  device?: number;
  /** Throw instead of falling back to the CPU when CUDA was asked for and is unusable. */
  required?: boolean;
  /** The CPU ops used for everything but CUDA matmuls, and as the fallback (default: forwardOps()). */
  cpu?: ForwardOps;
}

/** Where selectBackend looks for libdeepcast_cuda.so. */
export function cudaLibraryPath(): string {
  return process.env.DEEPCAST_CUDA_LIB || join(PACKAGE_ROOT, "build", "cuda", "libdeepcast_cuda.so");
}

/** The addon's CUDA loader, or the reason it is not there. */
export function cudaNative(): { native: CudaNative } | { reason: string } {
  const n = loadNative();
  if (!n) return { reason: `${nativeMissingReason()}; it holds the CUDA loader` };
  return { native: n };
}

function withDevice(ops: ForwardOps, device: "cpu" | "cuda", reason: string | null, deviceInfo: string | null): BackendOps {
  return {
    backend: ops.backend,
    device,
    reason,
    deviceInfo,
    matmul: (x, w, y, tokens, inDim, outDim, threads, ldy) => ops.matmul(x, w, y, tokens, inDim, outDim, threads, ldy),
    // The CUDA ops have none: weights then come as float32 (uploaded in their stored form is issue 11, item 2).
    ...(ops.matmulStored ? { matmulStored: ops.matmulStored } : {}),
    attention: (q, k, v, out, offsets, heads, dqk, dv, scale, threads) => ops.attention(q, k, v, out, offsets, heads, dqk, dv, scale, threads),
    ...(ops.attentionLatent ? { attentionLatent: ops.attentionLatent } : {}),
    siluMul: (g, u, threads) => ops.siluMul(g, u, threads),
  };
}

/**
 * Forward ops for `kind`: "cpu" is forwardOps(); "cuda" and "auto" run matmul on the GPU when the
 * CUDA library loads and finds a device, and otherwise return the CPU ops with `reason` set (or
 * throw, with `required`).
 */
export function selectBackend(kind: BackendKind = "auto", opts: SelectBackendOptions = {}): BackendOps {
  const cpu = opts.cpu ?? forwardOps();
  if (kind === "cpu") return withDevice(cpu, "cpu", null, null);
  if (kind !== "cuda" && kind !== "auto") throw new DeepcastError(`unknown backend "${String(kind)}": expected cpu, cuda or auto`);
  const loader = cudaNative();
  let reason: string | null;
  if ("reason" in loader) {
    reason = loader.reason;
  } else {
    const n = loader.native;
    reason = n.cudaInit(opts.libPath ?? cudaLibraryPath(), opts.device ?? 0);
    if (reason === null) {
      const gpu: ForwardOps = {
        backend: cpu.backend,
        matmul: (x, w, y, tokens, inDim, outDim, _threads, ldy) => n.cudaMatmul(x, w, y, tokens, inDim, outDim, ldy ?? outDim),
        attention: (q, k, v, out, offsets, heads, dqk, dv, scale, threads) => cpu.attention(q, k, v, out, offsets, heads, dqk, dv, scale, threads),
        ...(cpu.attentionLatent ? { attentionLatent: cpu.attentionLatent } : {}),
        siluMul: (g, u, threads) => cpu.siluMul(g, u, threads),
      };
      return withDevice(gpu, "cuda", null, n.cudaDeviceInfo());
    }
  }
  if (opts.required) throw new DeepcastError(`CUDA backend unavailable: ${reason}`, { code: "UNSUPPORTED" });
  return withDevice(cpu, "cpu", reason, null);
}
