#!/usr/bin/env bash
# Builds build/cuda/libdeepcast_cuda.so (the CUDA matmul backend, loaded at run time by the addon).
#
#   bash native/cuda/build.sh           # skips when the library is newer than its sources
#   bash native/cuda/build.sh --force
#
# Exits 0 with a message when nvcc is missing: the CPU path needs none of this.
# Environment: NVCC (compiler, default: nvcc on PATH, else /usr/local/cuda/bin/nvcc),
# DEEPCAST_CUDA_GENCODE (replaces the -gencode list below), DEEPCAST_CUDA_OUT (output path).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${DEEPCAST_CUDA_OUT:-$root/build/cuda/libdeepcast_cuda.so}"
force=0
[[ "${1:-}" == "--force" ]] && force=1

nvcc="${NVCC:-}"
if [[ -n "$nvcc" && ! -x "$(command -v "$nvcc" 2>/dev/null || true)" ]]; then
  echo "deepcast cuda: NVCC=$nvcc is not an executable; skipping libdeepcast_cuda.so, the CPU backend is unaffected"
  exit 0
fi
if [[ -z "$nvcc" ]]; then
  if command -v nvcc >/dev/null 2>&1; then nvcc="$(command -v nvcc)"
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then nvcc=/usr/local/cuda/bin/nvcc
  fi
fi
if [[ -z "$nvcc" ]]; then
  echo "deepcast cuda: nvcc not found (set NVCC or put it on PATH); skipping libdeepcast_cuda.so, the CPU backend is unaffected"
  exit 0
fi

sources=("$here/deepcast_cuda.cu" "$here/gemm_kernel.cuh" "$here/build.sh")
if [[ $force == 0 && -f "$out" ]]; then
  stale=0
  for s in "${sources[@]}"; do [[ "$s" -nt "$out" ]] && stale=1; done
  if [[ $stale == 0 ]]; then
    echo "deepcast cuda: $out is up to date"
    exit 0
  fi
fi

# SASS for Ampere (sm_80; also runs on sm_86/sm_89) and Hopper (sm_90: H100/H200), plus
# compute_90 PTX that the driver compiles for newer GPUs (Blackwell). nvcc 13 accepts
# sm_75..sm_121 (no Maxwell/Pascal/Volta).
read -r -a gencode <<<"${DEEPCAST_CUDA_GENCODE:--gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90}"

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
echo "deepcast cuda: $("$nvcc" --version | tail -n 2 | head -n 1)"
set -x
"$nvcc" -O3 -std=c++17 -shared -Xcompiler -fPIC -Xcompiler -fvisibility=hidden -cudart static \
  "${gencode[@]}" --resource-usage -Xptxas -warn-spills -o "$tmp" "$here/deepcast_cuda.cu"
{ set +x; } 2>/dev/null
mv -f "$tmp" "$out"
trap - EXIT
echo "deepcast cuda: built $out"
