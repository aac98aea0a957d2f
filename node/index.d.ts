// Type declarations of @supermachine/core, written by hand to match the
// runtime in lib/ (types-check/check.ts uses every one of them and is
// compiled with `tsc --noEmit --strict` by `cargo xtask test`).

/// <reference types="node" />

import type { Readable, Writable } from 'node:stream';

/** A host file copied into the guest at a fixed path before the workload starts. */
export interface ExtraFile {
  /** Host file (relative paths are taken from the current directory). Its contents are part of the build key. */
  hostPath: string
  /** Absolute guest path; missing parent directories are created. */
  guestPath: string
}

/**
 * A live host directory shared into the guest over virtio-fs.
 *
 * Not available yet: a build that names any `mounts` rejects with
 * `SUPERMACHINE_UNSUPPORTED` (the engine has no virtio-fs device yet). The
 * options are checked all the same.
 */
export interface MountSpec {
  /** Absolute host directory to share. */
  hostPath: string
  /** virtiofs tag the guest mounts by. Max 35 bytes. */
  guestTag: string
  /**
   * Symlink policy: `"deny"` | `"opaque"` | `"follow"`. Default
   * `"opaque"`: the guest may create symlinks, the host never follows
   * them outside the mount.
   */
  symlinks?: string
}

/**
 * A writable virtio-blk volume backed by a sparse host file, for write-heavy
 * paths (`node_modules`, `target/`).
 *
 * Not available yet: a build that names any `volumes` rejects with
 * `SUPERMACHINE_UNSUPPORTED`. The options are checked all the same.
 */
export interface VolumeSpec {
  /** Absolute host file backing the volume (created sparse if missing). */
  hostPath: string
  /** Absolute mount point in the guest. */
  guestPath: string
  /** Size cap in MiB. Default 1024. */
  sizeMib?: number
}

/** Options of {@link Image.build}. Unknown option names are refused. */
export interface BuildOptions {
  /**
   * The image, as `docker run` takes it: `alpine:latest`,
   * `registry.example.com/team/app:v2`. Taken from the local image store
   * when it is there, else pulled (mirrors and credentials as
   * `supermachine run` uses them). Required unless `source` is given.
   */
  ref?: string
  /**
   * Override where to fetch the image bytes: `oci:/path/to/layout[:tag]`
   * (an OCI image layout) or `docker-archive:/path/to/image.tar`
   * (`docker save` output). When given, the image comes from here, not
   * from a registry pull of `ref`.
   */
  source?: string
  /** Names the snapshot directory (default: the build key). A named snapshot whose inputs changed is re-baked in place. */
  name?: string
  /** Guest memory. Default 256. */
  memoryMib?: number
  /** Virtual CPUs. Default 1. */
  vcpus?: number
  /** The workload, started in the background before the snapshot. Default: the image's Entrypoint + Cmd. */
  cmd?: Array<string>
  /** Environment of the workload and of every later exec. */
  env?: Record<string, string>
  /** Working directory of the workload and of every later exec. */
  workdir?: string
  /** User of the workload and of every later exec (`name`, `uid`, `uid:gid`). */
  user?: string
  /** Listener port (used with `listenerRequired`). Default 80. */
  guestPort?: number
  /** Wait for the workload's TCP listener on `guestPort` before snapshotting. Default false. */
  listenerRequired?: boolean
  /** Stage host files into the guest at fixed paths. */
  extraFiles?: Array<ExtraFile>
  /** Live host directory mounts via virtio-fs. Not available yet (see {@link MountSpec}). */
  mounts?: Array<MountSpec>
  /** Writable virtio-blk volumes. Not available yet (see {@link VolumeSpec}). */
  volumes?: Array<VolumeSpec>
  /** Cache key for the warmup; bump it when the warmup changes. */
  warmupTag?: string
  /**
   * Post-boot state pre-population: runs after the workload started (and
   * listens, if asked), before the snapshot. The bake waits for it, with no
   * time limit of its own (give long commands a `timeoutMs`); a thrown
   * error fails the build with that error.
   */
  warmup?: (vm: WarmupVm) => Promise<void> | void
  /** Where to write the snapshot. Default `$SUPERMACHINE_SNAPSHOTS_DIR`, else `~/.local/supermachine-snapshots`. */
  snapshotsDir?: string
  /** Extra kernel command line tokens, appended after supermachine's own. Part of the build key. */
  extraKernelArgs?: Array<string>
  /**
   * The guest's network: outbound connections (TCP, UDP, ping) made for it
   * by an unprivileged passt process of the VM's own (needs `passt`
   * installed); nothing connects in (see {@link Vm.exposeTcp}). Default:
   * none.
   * - `true`: public IPv4 addresses only (no private, loopback,
   *   link-local/metadata or reserved ranges, none of the host's addresses).
   * - `{ allow: ['10.0.0.5:5432', '0.0.0.0/0:443'] }`: only these
   *   (`ADDR[/PREFIX][:PORT[-PORT]]`, IPv4), and DNS.
   *
   * The bake's warmup runs with it, and the VMs of this image's pools get
   * it. Whether there is a network is part of the build key; the rules are
   * not.
   */
  network?: boolean | { allow: Array<string> }
}

/** Options of {@link Image.pool}. */
export interface PoolOptions {
  /** VMs kept restored and idle. Default 1. */
  min?: number
  /** Most VMs in existence at once (idle, handed out, being restored). Default max(4, min). */
  max?: number
  /** A released VM is thrown away and a fresh copy restored (nothing leaks between users). Default true. */
  restoreOnRelease?: boolean
  /** How long `acquire()` waits when `max` VMs are in use. Default 30000. */
  acquireTimeoutMs?: number
}

/** A pool's counts, from {@link Pool.status}. */
export interface PoolStatus {
  idle: number
  leased: number
  restoring: number
  /** VMs found dead and replaced so far. */
  replaced: number
}

/** A command to run. `vm.exec(['ls', '/'])` is short for `vm.exec({ argv: ['ls', '/'] })`. */
export interface SpawnOptions {
  /** The program and its arguments (the program is looked up in PATH). */
  argv: Array<string>
  /** Variables added to (or replacing) the VM's environment. */
  env?: Record<string, string>
  /** Absolute working directory in the guest. */
  cwd?: string
  /** Run as this guest user (`name`, `uid`, `uid:gid`). Default: the image's User, else root. */
  user?: string
  /** Kill the command (with its whole session) after this long; the call then rejects with `ETIMEDOUT`. */
  timeoutMs?: number
  /** Most stdout bytes kept; the rest is counted in `stdoutDropped`. Default 64 MiB. */
  stdoutLimit?: number
  /** Most stderr bytes kept; the rest is counted in `stderrDropped`. Default 64 MiB. */
  stderrLimit?: number
}

/** Options of `exec`: a command and the bytes of its stdin. */
export interface ExecOptions extends SpawnOptions {
  /** The command's standard input (default: empty). */
  stdin?: string | Uint8Array
}

/** How a process ended. */
export interface ExitStatus {
  /** Its exit code; null when a signal ended it. 127: no such program. */
  exitCode: number | null
  /** The signal that ended it (`'SIGKILL'`), or null. */
  signal: NodeJS.Signals | null
  /** It ran past `timeoutMs` (the call rejects with `ETIMEDOUT` then). */
  timedOut: boolean
  stdoutDropped: number
  stderrDropped: number
}

/** What `exec` resolves with. */
export interface ExecResult extends ExitStatus {
  stdout: Buffer
  stderr: Buffer
}

export interface WriteFileOptions {
  /** Permission bits of a created file. Default 0o644. */
  mode?: number
  /** Append instead of replacing (created when missing). */
  append?: boolean
  /** Create missing parent directories. */
  createParents?: boolean
}

export interface ReadFileOptions {
  /** Most bytes to read; a larger file rejects with `ERR_FS_FILE_TOO_LARGE`. Default 2 GiB - 1. */
  maxBytes?: number
}

/** Options of {@link Vm.exposeTcp}. */
export interface ExposeTcpOptions {
  /** The guest TCP port to reach. */
  guestPort: number
  /** Host port to listen on (0: any free port). */
  hostPort?: number
  /** Host address to listen on. Default `127.0.0.1`. */
  host?: string
}

/** An image VMs start from: a snapshot, built or read. */
export declare class Image {
  private constructor()
  /**
   * Bakes `options.ref` into a snapshot: boots it, starts `cmd`, waits for
   * its listener, runs `warmup`, snapshots. Cached by every input.
   */
  static build(options: BuildOptions): Promise<Image>
  /** The snapshot in `dir` (from `Image.build` or `vm.snapshot`). */
  static fromSnapshot(dir: string): Promise<Image>
  /** What it was built from. */
  readonly name: string
  /** The snapshot directory. */
  readonly snapshotDir: string | null
  /** The build key, for a built image. */
  readonly key: string | null
  /** A pool of VMs restored from this image. */
  pool(options?: PoolOptions): Promise<Pool>
}

/** Warm copies of one snapshot. */
export declare class Pool {
  private constructor()
  /** A VM for the caller alone. */
  acquire(): Promise<Vm>
  status(): PoolStatus
  /** Resolves once `min` VMs are idle. */
  waitReady(options?: { timeoutMs?: number }): Promise<void>
  /** Stops the idle VMs; later acquires reject with `SUPERMACHINE_POOL_CLOSED`. */
  shutdown(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/** The VM a warmup callback gets; valid only while the warmup runs. */
export declare class WarmupVm {
  private constructor()
  exec(options: ExecOptions | Array<string>): Promise<ExecResult>
  writeFile(path: string, data: string | Uint8Array, options?: WriteFileOptions): Promise<void>
  readFile(path: string, options?: ReadFileOptions): Promise<Buffer>
}

/** A VM handed out by {@link Pool.acquire}. */
export declare class Vm {
  private constructor()
  /** Its short id. */
  readonly id: string
  /** Whether `release()` was called. */
  readonly released: boolean
  exec(options: ExecOptions | Array<string>): Promise<ExecResult>
  spawn(options: SpawnOptions | Array<string>): Promise<ExecChild>
  writeFile(path: string, data: string | Uint8Array, options?: WriteFileOptions): Promise<void>
  readFile(path: string, options?: ReadFileOptions): Promise<Buffer>
  /** Snapshots the running VM into `dir` (must not exist); it runs on. */
  snapshot(dir: string): Promise<Image>
  /**
   * Publishes a guest TCP port on the host (127.0.0.1 and a free port
   * unless given), carried over vsock: the guest needs no network. Open
   * until `close()` or this handle's release.
   */
  exposeTcp(options: ExposeTcpOptions): Promise<TcpForwarder>
  /** Gives it back to its pool; later calls reject with `SUPERMACHINE_VM_RELEASED`. */
  release(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/** A process started with {@link Vm.spawn}. */
export declare class ExecChild {
  private constructor()
  /** Its pid in the guest; null when the program could not start. */
  readonly pid: number | null
  /** Its stdout as a Readable (with backpressure). */
  readonly stdout: Readable
  /** Its stderr as a Readable. */
  readonly stderr: Readable
  /** Its stdin as a Writable; `end()` closes it. */
  readonly stdin: Writable
  writeStdin(data: string | Uint8Array): Promise<void>
  closeStdin(): Promise<void>
  /** The next stdout chunk, or null at its end. */
  readStdout(): Promise<Buffer | null>
  readStderr(): Promise<Buffer | null>
  /** Waits for it to end (output nobody asked for is discarded). */
  wait(): Promise<ExitStatus>
  /** Sends a signal (default `'SIGTERM'`). */
  kill(signal?: NodeJS.Signals | number): Promise<void>
  signal(signal: NodeJS.Signals | number): Promise<void>
}

/** A host TCP port forwarded to a guest port (see {@link Vm.exposeTcp}). */
export declare class TcpForwarder {
  private constructor()
  readonly host: string
  readonly port: number
  readonly guestPort: number
  close(): Promise<void>
}

/** Every error code this package gives errors. */
export declare const ErrorCodes: {
  readonly ENOENT: 'ENOENT'
  readonly EACCES: 'EACCES'
  readonly EEXIST: 'EEXIST'
  readonly ENOTDIR: 'ENOTDIR'
  readonly EISDIR: 'EISDIR'
  readonly ENOTEMPTY: 'ENOTEMPTY'
  readonly EPIPE: 'EPIPE'
  readonly ESRCH: 'ESRCH'
  readonly ETIMEDOUT: 'ETIMEDOUT'
  readonly ERR_INVALID_ARG_TYPE: 'ERR_INVALID_ARG_TYPE'
  readonly ERR_INVALID_ARG_VALUE: 'ERR_INVALID_ARG_VALUE'
  readonly ERR_OUT_OF_RANGE: 'ERR_OUT_OF_RANGE'
  readonly ERR_UNKNOWN_SIGNAL: 'ERR_UNKNOWN_SIGNAL'
  readonly ERR_FS_FILE_TOO_LARGE: 'ERR_FS_FILE_TOO_LARGE'
  readonly UNSUPPORTED: 'SUPERMACHINE_UNSUPPORTED'
  readonly VM_RELEASED: 'SUPERMACHINE_VM_RELEASED'
  readonly VM_DIED: 'SUPERMACHINE_VM_DIED'
  readonly WARMUP_OVER: 'SUPERMACHINE_WARMUP_OVER'
  readonly WARMUP_FAILED: 'SUPERMACHINE_WARMUP_FAILED'
  readonly POOL_TIMEOUT: 'SUPERMACHINE_POOL_TIMEOUT'
  readonly POOL_CLOSED: 'SUPERMACHINE_POOL_CLOSED'
  readonly RESTORE_FAILED: 'SUPERMACHINE_RESTORE_FAILED'
  readonly BOOT_TIMEOUT: 'SUPERMACHINE_BOOT_TIMEOUT'
  readonly NO_LISTENER: 'SUPERMACHINE_NO_LISTENER'
  readonly IMAGE_NOT_FOUND: 'SUPERMACHINE_IMAGE_NOT_FOUND'
  readonly IMAGE: 'SUPERMACHINE_IMAGE'
  readonly BAD_SNAPSHOT: 'SUPERMACHINE_BAD_SNAPSHOT'
  readonly NO_KVM: 'SUPERMACHINE_NO_KVM'
  readonly KERNEL_MISSING: 'SUPERMACHINE_KERNEL_MISSING'
  readonly MISSING_BINARY: 'SUPERMACHINE_MISSING_BINARY'
  readonly GUEST_FAILED: 'SUPERMACHINE_GUEST_FAILED'
  readonly PROTOCOL: 'SUPERMACHINE_PROTOCOL'
  readonly INTERNAL: 'SUPERMACHINE_INTERNAL'
  readonly EPERM: 'EPERM'
  readonly ENOSPC: 'ENOSPC'
  readonly ECONNREFUSED: 'ECONNREFUSED'
  readonly EADDRINUSE: 'EADDRINUSE'
  readonly EADDRNOTAVAIL: 'EADDRNOTAVAIL'
  readonly ERR_ILLEGAL_CONSTRUCTOR: 'ERR_ILLEGAL_CONSTRUCTOR'
  readonly ERR_UNSUPPORTED_PLATFORM: 'ERR_UNSUPPORTED_PLATFORM'
  readonly HOST_TOOL: 'SUPERMACHINE_HOST_TOOL'
  readonly IO: 'SUPERMACHINE_IO'
  readonly LIST_LIMIT: 'SUPERMACHINE_LIST_LIMIT'
  /** A volume's file is attached to another VM (one VM at a time). */
  readonly VOLUME_IN_USE: 'SUPERMACHINE_VOLUME_IN_USE'
  readonly REGISTRY_AUTH: 'SUPERMACHINE_REGISTRY_AUTH'
  readonly UNSAFE_RUNTIME_DIR: 'SUPERMACHINE_UNSAFE_RUNTIME_DIR'
  readonly VERSION_MISMATCH: 'SUPERMACHINE_VERSION_MISMATCH'
}

/** One of {@link ErrorCodes}. */
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes]

/** The errors this package rejects with: an `Error` with a stable `code`. */
export interface SupermachineError extends Error {
  code: ErrorCode
  /** The guest's serial console log, when a VM died and left one. */
  serialLog?: string
  /** The guest (or host) path the operation was about. */
  path?: string
}

/** `ETIMEDOUT` from `exec`/`wait`: what the process did before it was killed. */
export interface ExecTimeoutError extends SupermachineError {
  code: 'ETIMEDOUT'
  result: ExecResult | ExitStatus
  stdout?: Buffer
  stderr?: Buffer
}
