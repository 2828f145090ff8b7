/**
 * `npm install` on a machine without a C++ compiler: scripts/install-native.mjs runs node-gyp, which
 * fails, and the install still succeeds with a message that says what works without the addon and how
 * to get a compiler (node-gyp's stack trace goes to a log file). Run in a copy of the package's native
 * sources, so this checkout's build/ is untouched.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { cp, mkdir, symlink } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ROOT, tempDir } from "./helpers.js";

let pkg: string;
beforeAll(async () => {
  pkg = join(await tempDir(), "deepcast");
  await mkdir(pkg);
  for (const f of ["binding.gyp", "package.json", "native", "scripts"]) await cp(join(ROOT, f), join(pkg, f), { recursive: true });
  await symlink(join(ROOT, "node_modules"), join(pkg, "node_modules"));
});

function install(env: Record<string, string | undefined>) {
  const base: Record<string, string | undefined> = { ...process.env, ...env };
  if (!base.npm_config_nodedir && existsSync("/usr/include/node/node.h")) base.npm_config_nodedir = "/usr";
  const r = spawnSync(process.execPath, [join(pkg, "scripts", "install-native.mjs")], { cwd: pkg, encoding: "utf8", env: base as NodeJS.ProcessEnv });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function expectClearMessage(stderr: string) {
  expect(stderr).toMatch(/the native addon was not built/);
  expect(stderr).toMatch(/works without it, with the same results/);
  expect(stderr).toMatch(/to-gguf to quantized types/);
  expect(stderr).toMatch(/apt-get install -y g\+\+ make python3/);
  expect(stderr).toMatch(/npm rebuild deepcast/);
  expect(stderr).not.toMatch(/gyp ERR!|\n\s+at /);
  const log = /node-gyp's output: (\S+)/.exec(stderr)?.[1];
  expect(log && readFileSync(log, "utf8")).toMatch(/gyp ERR!/);
  expect(existsSync(join(pkg, "build", "Release", "deepcast_native.node"))).toBe(false);
}

describe("install without a C++ compiler", () => {
  it("CXX names a compiler that is not there: the install succeeds with a clear message", () => {
    const r = install({ CXX: "/nonexistent/bin/g++" });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/the C\+\+ compiler CXX=\/nonexistent\/bin\/g\+\+ was not found/);
    expectClearMessage(r.stderr);
  }, 120_000);

  it("no compiler on the PATH: the same, and DEEPCAST_REQUIRE_NATIVE=1 makes it fail", async () => {
    // A PATH with node, python3 and make, but no c++/g++/clang++.
    const bin = join(await tempDir(), "bin");
    await mkdir(bin);
    for (const tool of ["python3", "make", "sh"]) {
      const where = spawnSync("sh", ["-c", `command -v ${tool}`], { encoding: "utf8" }).stdout.trim();
      if (where) await symlink(where, join(bin, tool));
    }
    await symlink(process.execPath, join(bin, "node"));
    const r = install({ PATH: bin, CXX: undefined, CC: undefined });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/no C\+\+ compiler was found \(c\+\+, g\+\+ or clang\+\+ on the PATH, or CXX\)/);
    expectClearMessage(r.stderr);
    const strict = install({ PATH: bin, CXX: undefined, CC: undefined, DEEPCAST_REQUIRE_NATIVE: "1" });
    expect(strict.code).toBe(1);
    expect(strict.stderr).toMatch(/the native addon was not built/);
  }, 120_000);
});
