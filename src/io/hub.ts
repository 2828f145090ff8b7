/**
 * A checkpoint on the Hugging Face Hub, read through @huggingface/hub. Headers are read with HTTP
 * Range requests; a file is downloaded only when a command asks for its local path, into the
 * Python-compatible cache (`models--org--name/{blobs,snapshots/<sha>,refs}`) so that files already
 * fetched by `huggingface-cli` or transformers are reused, and vice versa.
 *
 * Every request is pinned to the commit sha the revision resolves to when first used, so a branch
 * that moves during a long conversion cannot mix shards of two versions.
 */
import { createWriteStream } from "node:fs";
import { copyFile, mkdir, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join, relative } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as NodeReadableStream } from "node:stream/web";
import {
  downloadFile,
  HubApiError,
  InvalidApiResponseFormatError,
  listFiles,
  modelInfo,
  type ListFileEntry,
} from "@huggingface/hub";
import { DeepcastError } from "../errors.js";
import type { SafetensorsHeader } from "./safetensors.js";
import { readHeaderByRanges, type CheckpointSource, type SourceFile } from "./source.js";

export const DEFAULT_HUB_URL = "https://huggingface.co";

/** `owner/name` as the Hub accepts it (huggingface_hub's validate_repo_id, with the owner required). */
const REPO_ID = /^[A-Za-z0-9][\w.-]{0,95}\/[\w.-]{1,96}$/;
const COMMIT_SHA = /^[0-9a-f]{40}$/;

export function isHubRepoId(spec: string): boolean {
  return REPO_ID.test(spec) && !spec.includes("--") && !spec.includes("..") && !/[.-]$/.test(spec);
}

/** The hub cache folder, resolved the way @huggingface/hub and huggingface_hub do. */
export function hfHubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return (
    env["HF_HUB_CACHE"] ??
    env["HUGGINGFACE_HUB_CACHE"] ??
    join(env["HF_HOME"] ?? join(env["XDG_CACHE_HOME"] ?? join(homedir(), ".cache"), "huggingface"), "hub")
  );
}

export interface HubSourceOptions {
  /** Branch, tag or commit sha; default `main`. */
  revision?: string;
  /** Default `$HF_TOKEN` (the library does not read it). */
  accessToken?: string;
  /** Default `$HF_ENDPOINT`, else https://huggingface.co (the library does not read it). */
  hubUrl?: string;
  /** Default {@link hfHubCacheDir}. */
  cacheDir?: string;
  fetch?: typeof fetch;
}

export class HubSource implements CheckpointSource {
  readonly revision: string;
  readonly hubUrl: string;
  readonly cacheDir: string;
  private readonly accessToken: string | undefined;
  private readonly fetchFn: typeof fetch | undefined;
  private commitSha?: Promise<string>;
  private listing?: Promise<Map<string, ListFileEntry>>;
  private readonly downloads = new Map<string, Promise<string>>();

  constructor(readonly repo: string, opts: HubSourceOptions = {}) {
    if (!isHubRepoId(repo)) {
      throw new DeepcastError(`not a Hugging Face model repo id: expected owner/name, like deepseek-ai/DeepSeek-V3`, { file: repo });
    }
    this.revision = opts.revision ?? "main";
    this.hubUrl = (opts.hubUrl ?? (process.env["HF_ENDPOINT"] || DEFAULT_HUB_URL)).replace(/\/+$/, "");
    this.cacheDir = opts.cacheDir ?? hfHubCacheDir();
    this.accessToken = opts.accessToken ?? (process.env["HF_TOKEN"] || undefined);
    this.fetchFn = opts.fetch;
    // The library rejects other tokens with a bare TypeError deep inside the first request.
    if (this.accessToken !== undefined && !this.accessToken.startsWith("hf_")) {
      throw new DeepcastError("HF_TOKEN must be a Hugging Face access token starting with hf_", { file: this.description });
    }
  }

  get description(): string {
    return `${this.repo}@${this.revision}`;
  }

  async listFiles(): Promise<SourceFile[]> {
    const entries = await this.entries();
    return [...entries.values()].map((e) => ({ name: e.path, size: e.size }));
  }

  async readFile(name: string): Promise<Buffer> {
    const blob = await this.blob(name);
    return Buffer.from(await this.hub(() => blob.arrayBuffer(), name));
  }

  async readHeader(name: string): Promise<SafetensorsHeader> {
    const blob = await this.blob(name);
    return readHeaderByRanges(this.label(name), blob.size, async (start, end) => {
      const bytes = new Uint8Array(await this.hub(() => blob.slice(start, end).arrayBuffer(), name));
      // A server that ignores Range answers with the whole file: never parse that as the header.
      if (bytes.length !== end - start) {
        throw new DeepcastError(
          `the Hub answered a request for bytes ${start}-${end - 1} with ${bytes.length} bytes (Range not honoured)`,
          { file: this.label(name) },
        );
      }
      return bytes;
    });
  }

  localPath(name: string): Promise<string> {
    let pending = this.downloads.get(name);
    if (!pending) {
      pending = this.download(name);
      this.downloads.set(name, pending);
      pending.catch(() => this.downloads.delete(name));
    }
    return pending;
  }

  async fileIdentity(name: string): Promise<string> {
    const entry = await this.entry(name);
    return `${entry.size}:${etagOf(entry, this.label(name))}`;
  }

  /** Downloads into the cache unless the snapshot already holds the file; returns the snapshot path. */
  private async download(name: string): Promise<string> {
    const entry = await this.entry(name);
    const sha = await this.commit();
    const repoDir = join(this.cacheDir, `models--${this.repo.replace("/", "--")}`);
    const pointer = join(repoDir, "snapshots", sha, name);
    const file = this.label(name);
    const blobPath = join(repoDir, "blobs", etagOf(entry, file));
    try {
      if (this.revision !== sha) {
        const ref = join(repoDir, "refs", this.revision);
        await mkdir(dirname(ref), { recursive: true });
        await writeFile(ref, sha);
      }
      if ((await sizeOf(pointer)) === entry.size) return pointer;
      if ((await sizeOf(blobPath)) !== entry.size) {
        const blob = await this.blob(name);
        const incomplete = `${blobPath}.incomplete`;
        await mkdir(dirname(blobPath), { recursive: true });
        try {
          const body = Readable.fromWeb(blob.stream() as NodeReadableStream<Uint8Array>);
          await pipeline(body, createWriteStream(incomplete));
        } catch (e) {
          await rm(incomplete, { force: true });
          throw new DeepcastError(`download failed: ${messageOf(e)}`, { file }, { cause: e });
        }
        const got = await sizeOf(incomplete);
        if (got !== entry.size) {
          await rm(incomplete, { force: true });
          throw new DeepcastError(`download incomplete: got ${got} of ${entry.size} bytes`, { file });
        }
        await rename(incomplete, blobPath);
      }
      await mkdir(dirname(pointer), { recursive: true });
      await rm(pointer, { force: true });
      await symlink(relative(dirname(pointer), blobPath), pointer).catch(() => copyFile(blobPath, pointer));
      return pointer;
    } catch (e) {
      if (e instanceof DeepcastError) throw e;
      throw new DeepcastError(`cannot write the Hugging Face cache at ${this.cacheDir}: ${messageOf(e)}`, { file }, { cause: e });
    }
  }

  /** A lazy blob of the file: `slice().arrayBuffer()` issues Range requests, `stream()` the full GET. */
  private async blob(name: string): Promise<Blob> {
    await this.entry(name);
    const revision = await this.commit();
    const blob = await this.hub(() => downloadFile({ ...this.params(), path: name, revision }), name);
    if (!blob) throw new DeepcastError(`file not found in Hugging Face repo ${this.description}`, { file: this.label(name) });
    return blob;
  }

  private async entry(name: string): Promise<ListFileEntry> {
    const entry = (await this.entries()).get(name);
    if (!entry) throw new DeepcastError(`file not found in Hugging Face repo ${this.description}`, { file: this.label(name) });
    return entry;
  }

  private entries(): Promise<Map<string, ListFileEntry>> {
    if (this.listing) return this.listing;
    this.listing = this.hub(async () => {
      const revision = await this.commit();
      const files = new Map<string, ListFileEntry>();
      for await (const e of listFiles({ ...this.params(), revision })) {
        // Top level only; a name that could escape the cache folder is not a checkpoint file.
        if (e.type === "file" && !/[/\\]/.test(e.path) && e.path !== "..") files.set(e.path, e);
      }
      return new Map([...files].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    });
    this.listing.catch(() => (this.listing = undefined));
    return this.listing;
  }

  /** The commit sha the revision points to, resolved once. */
  private commit(): Promise<string> {
    if (COMMIT_SHA.test(this.revision)) return Promise.resolve(this.revision);
    if (this.commitSha) return this.commitSha;
    this.commitSha = this.hub(async () => {
      const info = await modelInfo({ ...this.params(), name: this.repo, revision: this.revision, additionalFields: ["sha"] });
      if (!COMMIT_SHA.test(info.sha)) throw new InvalidApiResponseFormatError(`no commit sha for revision ${this.revision}`);
      return info.sha;
    });
    this.commitSha.catch(() => (this.commitSha = undefined));
    return this.commitSha;
  }

  private params() {
    return { repo: this.repo, hubUrl: this.hubUrl, accessToken: this.accessToken, fetch: this.fetchFn };
  }

  private label(name: string): string {
    return `${this.description}/${name}`;
  }

  /** Runs a Hub call, turning its failures into errors that name the repo (and file) and say what to do. */
  private async hub<T>(call: () => Promise<T>, name?: string): Promise<T> {
    try {
      return await call();
    } catch (e) {
      throw this.explain(e, name);
    }
  }

  private explain(e: unknown, name: string | undefined): DeepcastError {
    if (e instanceof DeepcastError) return e;
    const file = name === undefined ? this.description : this.label(name);
    if (e instanceof HubApiError) {
      if (e.statusCode === 401 || e.statusCode === 403) {
        const hint = this.accessToken
          ? "the token in HF_TOKEN has no access to it: check the token, and for a gated model accept its terms on the model page"
          : "it may be private or gated: set HF_TOKEN to a Hugging Face access token with read access";
        return new DeepcastError(`the Hugging Face Hub refused access (HTTP ${e.statusCode}) to ${this.repo}; ${hint}`, { file }, { cause: e });
      }
      if (e.statusCode === 404) {
        const what = name === undefined
          ? `Hugging Face repo ${this.repo} or its revision ${this.revision} not found`
          : `file not found in Hugging Face repo ${this.description}`;
        return new DeepcastError(what, { file }, { cause: e });
      }
      return new DeepcastError(`the Hugging Face Hub answered HTTP ${e.statusCode}: ${e.message}`, { file }, { cause: e });
    }
    if (e instanceof InvalidApiResponseFormatError) {
      return new DeepcastError(`unexpected response from the Hugging Face Hub at ${this.hubUrl}: ${e.message}`, { file }, { cause: e });
    }
    return new DeepcastError(
      `cannot reach the Hugging Face Hub at ${this.hubUrl}: ${messageOf(e)} (check the network, or HF_ENDPOINT for a mirror)`,
      { file },
      { cause: e },
    );
  }
}

/** The name huggingface_hub gives the cached blob: the LFS sha256, else the Xet hash, else the git oid. */
function etagOf(entry: ListFileEntry, file: string): string {
  const etag = entry.lfs?.oid ?? entry.xetHash ?? entry.oid;
  if (!etag || !/^[\w-]+$/.test(etag)) {
    throw new DeepcastError("the Hub listing gives no usable etag for this file", { file });
  }
  return etag;
}

async function sizeOf(path: string): Promise<number | undefined> {
  return (await stat(path).catch(() => null))?.size;
}

function messageOf(e: unknown): string {
  const cause = e instanceof Error && e.cause instanceof Error ? `: ${e.cause.message}` : "";
  return e instanceof Error ? e.message + cause : String(e);
}
