#!/usr/bin/env node
// `npm install` hook: builds the native addon from source with node-gyp, as `node-gyp rebuild` does.
// When the build fails (no C++ compiler, no Python, no Node headers), the install still succeeds and
// this prints what works without the addon and how to get a compiler; node-gyp's own output goes to a
// log file instead of a stack trace on the terminal. Nothing falls back silently: every command reports
// `backend: "ts"` in its summary, the TypeScript kernels give the same bytes as the native ones, and a
// command that needs the addon (ggml quantization) stops with an error that says so.
// DEEPCAST_REQUIRE_NATIVE=1 makes a failed build fail the install (CI, packaging).
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { delimiter, dirname, isAbsolute, join } from "node:path";

const root = join(dirname(new URL(import.meta.url).pathname), "..");

/** node-gyp as npm runs it: npm's own copy (npm_config_node_gyp), else one resolvable from here, else the PATH. */
function nodeGypCommand() {
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm && existsSync(fromNpm)) return [process.execPath, fromNpm];
  try {
    return [process.execPath, createRequire(import.meta.url).resolve("node-gyp/bin/node-gyp.js")];
  } catch {
    // The copy bundled with npm, beside this node (run by hand: `node scripts/install-native.mjs`).
    const bundled = join(dirname(process.execPath), "..", "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js");
    return existsSync(bundled) ? [process.execPath, bundled] : ["node-gyp"];
  }
}

function onPath(cmd) {
  if (isAbsolute(cmd)) return existsSync(cmd);
  return (process.env.PATH ?? "").split(delimiter).some((d) => d && existsSync(join(d, cmd)));
}

/** The C++ compiler node-gyp's Makefile will call (CXX, else c++/g++/clang++ on the PATH), or null. */
function findCompiler() {
  const cxx = process.env.CXX?.trim();
  if (cxx) return onPath(cxx.split(/\s+/)[0]) ? cxx : null;
  return ["c++", "g++", "clang++"].find(onPath) ?? null;
}

const [cmd, ...pre] = nodeGypCommand();
const r = spawnSync(cmd, [...pre, "rebuild"], { cwd: root, encoding: "utf8", maxBuffer: 256 * 1024 * 1024 });
if (r.status === 0) {
  process.stdout.write("deepcast: native addon built (build/Release/deepcast_native.node)\n");
  process.exit(0);
}

const log = join(mkdtempSync(join(tmpdir(), "deepcast-install-")), "node-gyp.log");
writeFileSync(log, `${cmd} ${[...pre, "rebuild"].join(" ")}\n\n${r.error ? String(r.error) + "\n" : ""}${r.stdout ?? ""}${r.stderr ?? ""}`);
const compiler = findCompiler();
const cause = r.error
  ? `node-gyp could not be started (${r.error.message})`
  : !compiler
    ? process.env.CXX
      ? `the C++ compiler CXX=${process.env.CXX} was not found`
      : "no C++ compiler was found (c++, g++ or clang++ on the PATH, or CXX)"
    : `node-gyp failed with exit status ${r.status} (compiler: ${compiler})`;
process.stderr.write(
  [
    "",
    `deepcast: the native addon was not built: ${cause}.`,
    `  node-gyp's output: ${log}`,
    "",
    "  deepcast is installed and works without it, with the same results, more slowly (pure TypeScript kernels):",
    "    fp8-to-bf16, to-demo, to-gguf to F32/F16/BF16, inspect, and validate on checkpoints and F32/F16/BF16 GGUFs.",
    "  Without it these stop with an error that says so: to-gguf to quantized types (Q8_0, K-quants, IQ),",
    "  validate on a quantized GGUF, and the CUDA backend. Summaries say which ran: \"backend\": \"native\" or \"ts\".",
    "",
    "  To build it, install a C++17 compiler, Python 3 and make, then run `npm rebuild deepcast`:",
    "    Debian/Ubuntu: sudo apt-get install -y g++ make python3",
    "    Fedora/RHEL:   sudo dnf install -y gcc-c++ make python3",
    "    macOS:         xcode-select --install",
    "",
  ].join("\n"),
);
process.exit(process.env.DEEPCAST_REQUIRE_NATIVE === "1" ? 1 : 0);
