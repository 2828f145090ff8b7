#!/usr/bin/env bash
# The CUDA backend on a GPU machine, in one go (about a minute; every step has a time limit):
#
#   bash bench/gpu-check.sh            # results in $OUT (default build/gpu-out): gpu.json, *.log
#
# Prepared here with `bash bench/gpu-pack.sh`, and run with `build` carried (the addon, the
# prebuilt libdeepcast_cuda.so, the bundled bench and a packed node). Steps:
#   1. the GPU and driver (nvidia-smi); node: on PATH if >= 20, else unpacked from build/gpu/node.xz
#   2. libdeepcast_cuda.so rebuilt with the machine's nvcc when there is one, else the carried one
#   3. vitest test/cuda.test.ts with DEEPCAST_EXPECT_GPU=1, when node_modules is present
#   4. build/forward-gpu.mjs --require-gpu: cudaMatmul vs CPU, forward on the golden batch vs
#      model.py (CUDA backend), then tokens/s CPU (16 threads) vs CUDA; summary in $OUT/gpu.json
# Exits non-zero at the first failure, with the reason on the last line.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/build/gpu-out}"
mkdir -p "$OUT"
THREADS="${THREADS:-16}"
t0=$SECONDS
vitest_status="not run"
so_origin="unknown"

log() { echo "[gpu-check +$((SECONDS - t0))s] $*"; }
die() {
  log "FAILED: $*"
  if [[ ! -f "$OUT/gpu.json" ]]; then
    local msg
    msg="$(printf '%s' "$*" | tr '\n\t' '  ' | sed 's/\\/\\\\/g; s/"/\\"/g')"
    printf '{"ok": false, "stage": "gpu-check.sh", "error": "%s"}\n' "$msg" >"$OUT/gpu.json"
  fi
  exit 1
}

# ---- 1. machine, node ---------------------------------------------------------------------
log "host $(uname -m), $(nproc) CPUs"
if command -v nvidia-smi >/dev/null 2>&1; then
  smi="$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)" || true
  log "nvidia-smi: ${smi:-no answer}"
else
  smi=""
  log "nvidia-smi not found"
fi

node_ok() { "$1" -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' >/dev/null 2>&1; }
NODE=""
if command -v node >/dev/null 2>&1 && node_ok node; then
  NODE="$(command -v node)"
elif [[ -f build/gpu/node.xz ]]; then
  mkdir -p /tmp/deepcast-node
  if command -v xz >/dev/null 2>&1; then
    xz -dc build/gpu/node.xz >/tmp/deepcast-node/node || die "xz could not unpack build/gpu/node.xz"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      build/gpu/node.xz /tmp/deepcast-node/node || die "python3 lzma could not unpack build/gpu/node.xz"
  fi
  chmod +x /tmp/deepcast-node/node
  NODE=/tmp/deepcast-node/node
  node_ok "$NODE" || die "the carried node does not run here: $("$NODE" --version 2>&1 | head -n 3)"
else
  die "no node >= 20 on PATH and no build/gpu/node.xz: run 'bash bench/gpu-pack.sh' before the device run and carry build"
fi
export PATH="$(dirname "$NODE"):$PATH"
log "node $("$NODE" --version) at $NODE"

[[ -f build/Release/deepcast_native.node ]] || die "build/Release/deepcast_native.node missing: build the addon, run bench/gpu-pack.sh, carry build"
[[ -d fixtures/tiny-dsv3 && -f fixtures/tiny-dsv3-golden/logits/logits.fp8-dequant.f32.bin ]] || die "fixtures/tiny-dsv3(-golden) missing from the working tree"

# ---- 2. libdeepcast_cuda.so -----------------------------------------------------------------
nvcc="$(command -v nvcc 2>/dev/null || true)"
[[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
if [[ -n $nvcc ]]; then
  log "building libdeepcast_cuda.so with $nvcc"
  if NVCC="$nvcc" timeout 150 bash native/cuda/build.sh --force >"$OUT/build-cuda.log" 2>&1; then
    so_origin="built here with $("$nvcc" --version | tail -n 2 | head -n 1)"
  else
    log "nvcc build failed ($OUT/build-cuda.log, end below); falling back to the carried library"
    tail -n 20 "$OUT/build-cuda.log"
    so_origin="carried (device build failed)"
  fi
else
  log "nvcc not found; using the carried build/cuda/libdeepcast_cuda.so"
  so_origin="carried (no nvcc on the device)"
fi
[[ -f build/cuda/libdeepcast_cuda.so ]] || die "no build/cuda/libdeepcast_cuda.so: not built here and not carried (bash bench/gpu-pack.sh)"
if command -v cuobjdump >/dev/null 2>&1; then
  log "kernel images: $(cuobjdump --list-elf --list-ptx build/cuda/libdeepcast_cuda.so 2>&1 | grep -oE '(sm|compute)_[0-9]+[a-z]?' | sort -u | tr '\n' ' ')"
fi
log "libdeepcast_cuda.so: $so_origin"

# Fail fast with the loader's own reason before any longer step.
init="$(timeout 60 "$NODE" -e '
  const n = require("./build/Release/deepcast_native.node");
  const r = n.cudaInit(process.cwd() + "/build/cuda/libdeepcast_cuda.so");
  console.log(r === null ? "ok " + n.cudaDeviceInfo() : "reason " + r);' 2>&1)"
case "$init" in
  ok\ *) log "cudaInit: ${init#ok }" ;;
  *) die "cudaInit: ${init#reason }" ;;
esac

# ---- 3. vitest (only if node_modules came along) ------------------------------------------
if [[ -f node_modules/vitest/vitest.mjs ]]; then
  log "vitest run test/cuda.test.ts"
  DEEPCAST_EXPECT_GPU=1 timeout 240 "$NODE" node_modules/vitest/vitest.mjs run test/cuda.test.ts 2>&1 | tee "$OUT/vitest.log"
  rc=${PIPESTATUS[0]}
  ((rc == 0)) && vitest_status="passed" || vitest_status="failed (exit $rc)"
  ((rc == 0)) || die "vitest test/cuda.test.ts failed (exit $rc); see vitest.log"
else
  vitest_status="skipped: node_modules not carried (over the 64 MiB carry limit); forward-gpu.mjs runs the GPU checks"
  log "vitest $vitest_status"
fi

# ---- 4. checks and timing -----------------------------------------------------------------
if [[ -f build/forward-gpu.mjs ]]; then
  bench=("$NODE" build/forward-gpu.mjs)
elif [[ -f node_modules/tsx/dist/cli.mjs ]]; then
  bench=("$NODE" node_modules/tsx/dist/cli.mjs bench/forward-gpu.ts)
else
  die "no build/forward-gpu.mjs (bash bench/gpu-pack.sh) and no node_modules/tsx"
fi
log "forward-gpu: checks, then CPU x$THREADS vs CUDA"
timeout 240 "${bench[@]}" --require-gpu --threads "$THREADS" --runs 5 --out "$OUT/gpu.json" 2>&1 | tee "$OUT/bench.log"
rc=${PIPESTATUS[0]}

# Add what this script saw to the summary.
DC_SMI="$smi" DC_SO="$so_origin" DC_VITEST="$vitest_status" "$NODE" -e '
  const fs = require("fs"); const p = process.argv[1];
  const j = fs.existsSync(p) ? JSON.parse(fs.readFileSync(p, "utf8")) : { ok: false };
  j.gpuCheck = { nvidiaSmi: process.env.DC_SMI, cudaLibrary: process.env.DC_SO, vitest: process.env.DC_VITEST };
  fs.writeFileSync(p, JSON.stringify(j, null, 2) + "\n");' "$OUT/gpu.json" || true

((rc == 124)) && die "forward-gpu ran past its 240 s limit"
((rc == 0)) || die "forward-gpu failed (exit $rc): see the FAIL lines above and $OUT/gpu.json"
log "all checks passed; summary in $OUT/gpu.json"
