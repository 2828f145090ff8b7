/**
 * The Hugging Face conventions deepcast shares with huggingface_hub and `hf` / `huggingface-cli`, on
 * the local side: where the cache and the saved token live (HF_HOME, HF_HUB_CACHE, HF_TOKEN_PATH),
 * HF_HUB_OFFLINE, what a cached snapshot of a revision is and whether it holds a whole checkpoint,
 * and a per-blob lock so that two processes downloading into one cache never write the same file.
 */
import { readFileSync } from "node:fs";
import { mkdir, open, readFile, readdir, readlink, rm, stat } from "node:fs/promises";
import { homedir, hostname } from "node:os";
import { basename, dirname, join } from "node:path";
import { DeepcastError } from "../errors.js";

const COMMIT_SHA = /^[0-9a-f]{40}$/;

/** `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface` (huggingface_hub's constants). */
export function hfHomeDir(env: NodeJS.ProcessEnv = process.env): string {
  return env["HF_HOME"] || join(env["XDG_CACHE_HOME"] || join(homedir(), ".cache"), "huggingface");
}

/** The hub cache folder, resolved the way @huggingface/hub and huggingface_hub do. */
export function hfHubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env["HF_HUB_CACHE"] ?? env["HUGGINGFACE_HUB_CACHE"] ?? join(hfHomeDir(env), "hub");
}

/** Where `hf auth login` / `huggingface-cli login` saves the token: `$HF_TOKEN_PATH`, else `$HF_HOME/token`. */
export function hfTokenPath(env: NodeJS.ProcessEnv = process.env): string {
  return env["HF_TOKEN_PATH"] || join(hfHomeDir(env), "token");
}

/** The access token as huggingface_hub finds it: `$HF_TOKEN`, else the saved token file; undefined when neither. */
export function hfToken(env: NodeJS.ProcessEnv = process.env): { token: string; from: string } | undefined {
  const fromEnv = env["HF_TOKEN"]?.trim();
  if (fromEnv) return { token: fromEnv, from: "HF_TOKEN" };
  const path = hfTokenPath(env);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
  const token = text.trim();
  return token ? { token, from: path } : undefined;
}

/** HF_HUB_OFFLINE as huggingface_hub reads it (1, ON, YES, TRUE, any case). */
export function hfHubOffline(env: NodeJS.ProcessEnv = process.env): boolean {
  return ["1", "ON", "YES", "TRUE"].includes((env["HF_HUB_OFFLINE"] ?? "").trim().toUpperCase());
}

/** `models--owner--name` under the cache. */
export function repoCacheDir(cacheDir: string, repo: string): string {
  return join(cacheDir, `models--${repo.replace("/", "--")}`);
}

/**
 * The model name of a path inside the hub cache (`…/models--owner--name/snapshots/<sha>[/file]`):
 * `name`, not the commit sha the folder is called; null for any other path.
 */
export function hubCacheModelName(path: string): string | null {
  const m = /(?:^|[\\/])models--[^\\/]+?--([^\\/]+)[\\/]snapshots[\\/][^\\/]+(?:[\\/][^\\/]*)?[\\/]*$/.exec(path);
  return m ? m[1]! : null;
}

export interface CachedSnapshot {
  /** The commit the revision resolved to (refs/<revision>, or the revision itself when it is a sha). */
  sha: string;
  dir: string;
  /** Checkpoint files the snapshot lacks (empty when it is complete). */
  missing: string[];
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null))?.isFile() ?? false;
}

/**
 * The cached snapshot of `repo` at `revision`, or null when the cache has none. A snapshot is
 * complete when it holds config.json and every shard its model.safetensors.index.json names (or a
 * single model.safetensors), each link resolving to a blob.
 */
export async function cachedSnapshot(cacheDir: string, repo: string, revision: string): Promise<CachedSnapshot | null> {
  const repoDir = repoCacheDir(cacheDir, repo);
  let sha = revision;
  if (!COMMIT_SHA.test(revision)) {
    const ref = await readFile(join(repoDir, "refs", revision), "utf8").catch(() => null);
    if (ref === null || !COMMIT_SHA.test(ref.trim())) return null;
    sha = ref.trim();
  }
  const dir = join(repoDir, "snapshots", sha);
  if (!(await stat(dir).catch(() => null))?.isDirectory()) return null;
  const missing: string[] = [];
  if (!(await isFile(join(dir, "config.json")))) missing.push("config.json");
  const index = join(dir, "model.safetensors.index.json");
  if (await isFile(index)) {
    let shards: string[] = [];
    try {
      const map = (JSON.parse(await readFile(index, "utf8")) as { weight_map?: Record<string, unknown> }).weight_map ?? {};
      shards = [...new Set(Object.values(map).filter((v): v is string => typeof v === "string"))].sort();
    } catch {
      missing.push("model.safetensors.index.json (unreadable)");
    }
    for (const s of shards) if (!(await isFile(join(dir, s)))) missing.push(s);
  } else if (!(await isFile(join(dir, "model.safetensors")))) {
    missing.push("model.safetensors.index.json or model.safetensors");
  }
  return { sha, dir, missing };
}

/** The blob name (etag) a snapshot file links to, or null when it is not a link into blobs/. */
export async function snapshotBlobName(path: string): Promise<string | null> {
  const target = await readlink(path).catch(() => null);
  if (target === null || basename(dirname(target)) !== "blobs") return null;
  return basename(target);
}

/** Top-level file names of a snapshot folder (links followed). */
export async function snapshotFiles(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  const out: string[] = [];
  for (const n of names.sort()) if (await isFile(join(dir, n))) out.push(n);
  return out;
}

interface LockHolder {
  pid: number;
  host: string;
  token: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

let lockSerial = 0;

/**
 * Takes the lock of one blob (`.locks/models--owner--name/<etag>.deepcast.lock`, beside
 * huggingface_hub's own lock files): created exclusively, holding the owner's pid and host. A lock
 * whose owner is a dead process on this host is taken over; a live one is waited for, with
 * `onWait` called once. Returns the release function.
 */
export async function lockBlob(
  cacheDir: string,
  repo: string,
  etag: string,
  opts: { pollMs?: number; onWait?: (holder: string, lockPath: string) => void } = {},
): Promise<() => Promise<void>> {
  const lockPath = join(cacheDir, ".locks", `models--${repo.replace("/", "--")}`, `${etag}.deepcast.lock`);
  await mkdir(dirname(lockPath), { recursive: true });
  const me: LockHolder = { pid: process.pid, host: hostname(), token: `${process.pid}-${Date.now()}-${++lockSerial}` };
  let waited = false;
  for (;;) {
    try {
      const fh = await open(lockPath, "wx");
      try {
        await fh.writeFile(JSON.stringify(me));
      } finally {
        await fh.close();
      }
      return async () => {
        // Only our own lock is removed (a lock taken over as stale belongs to someone else now).
        const now = await readFile(lockPath, "utf8").catch(() => null);
        if (now !== null && (JSON.parse(now) as LockHolder).token === me.token) await rm(lockPath, { force: true });
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") {
        throw new DeepcastError(`cannot create the download lock: ${(e as Error).message}`, { file: lockPath, code: "WRITE_FAILED" }, { cause: e });
      }
    }
    const text = await readFile(lockPath, "utf8").catch(() => null);
    if (text === null) continue; // released meanwhile
    let holder: LockHolder | null = null;
    try {
      holder = JSON.parse(text) as LockHolder;
    } catch {
      holder = null; // being written right now
    }
    if (holder && holder.host === me.host && !alive(holder.pid)) {
      await rm(lockPath, { force: true });
      continue;
    }
    if (!waited && holder) {
      waited = true;
      opts.onWait?.(`process ${holder.pid} on ${holder.host}`, lockPath);
    }
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 500));
  }
}
