#!/usr/bin/env bash
# Prepares build/ for bench/gpu-check.sh on a GPU machine that has no network and maybe no Node:
# everything lands in build/ (git-ignored), so the device run carries just `build`.
#
#   bash bench/gpu-pack.sh
#
#   build/Release/deepcast_native.node   the addon (must already be built: it holds the CUDA loader)
#   build/cuda/libdeepcast_cuda.so       prebuilt with this machine's nvcc (the device rebuilds if it can)
#   build/forward-gpu.mjs                bench/forward-gpu.ts bundled with esbuild: needs no node_modules
#   build/gpu/node.xz                    this machine's node, stripped and xz-compressed (~21 MB), used
#                                        there only when no node >= 20 is on PATH
#
# node_modules (hundreds of MB) is over the device's 64 MiB carry limit, so vitest cannot run
# there unless a node_modules is already present; forward-gpu.mjs repeats the GPU tests' checks.
# Note: `node-gyp rebuild` (npm install/build) deletes build/; run this script after it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

addon=build/Release/deepcast_native.node
if [[ ! -f $addon ]]; then
  echo "gpu-pack: $addon is missing; build the addon first: node-gyp rebuild (or npm run build)" >&2
  exit 1
fi
if ! node -e "process.exit(typeof require('./$addon').cudaInit === 'function' ? 0 : 1)"; then
  echo "gpu-pack: $addon has no CUDA loader (built before native/src/cuda_loader.cc); rebuild it" >&2
  exit 1
fi

bash native/cuda/build.sh
[[ -f build/cuda/libdeepcast_cuda.so ]] || echo "gpu-pack: no prebuilt libdeepcast_cuda.so (nvcc missing here); the device must build it"

esbuild=node_modules/.bin/esbuild
[[ -x $esbuild ]] || { echo "gpu-pack: $esbuild not found (npm ci)" >&2; exit 1; }
"$esbuild" bench/forward-gpu.ts --bundle --platform=node --format=esm --target=node20 \
  --outfile=build/forward-gpu.mjs --log-level=warning
echo "gpu-pack: bundled build/forward-gpu.mjs ($(stat -c %s build/forward-gpu.mjs) bytes)"

mkdir -p build/gpu
node_bin="$(readlink -f "$(command -v node)")"
version="$(node --version)"
if [[ -f build/gpu/node.xz && "$(cat build/gpu/node.version 2>/dev/null)" == "$version" ]]; then
  echo "gpu-pack: build/gpu/node.xz ($version) is up to date"
else
  echo "gpu-pack: packing $node_bin ($version): strip + xz -9, about a minute"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  cp "$node_bin" "$tmp/node"
  strip --strip-all "$tmp/node" 2>/dev/null || echo "gpu-pack: strip unavailable; packing unstripped"
  xz -9 -T0 -c "$tmp/node" >build/gpu/node.xz.tmp
  mv build/gpu/node.xz.tmp build/gpu/node.xz
  echo "$version" >build/gpu/node.version
fi

# What a device run carrying only `build` sends: tracked and untracked-not-ignored files, plus build/.
tree_bytes=$( { git ls-files -z --cached; git ls-files -z --others --exclude-standard; } |
  xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
build_bytes=$(du -sb build | cut -f1)
total=$((tree_bytes + build_bytes))
limit=$((64 * 1024 * 1024))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "gpu-pack: working tree $(mib "$tree_bytes") + build/ $(mib "$build_bytes") = $(mib "$total") of the 64 MiB carry limit"
if ((total > limit)); then
  echo "gpu-pack: over the limit: drop build/gpu/node.xz if the device has node >= 20, or remove stray files" >&2
  exit 1
fi
echo "gpu-pack: ready; on the device run: bash bench/gpu-check.sh   (carry: build)"
