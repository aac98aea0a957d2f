// Images (`Image.build`, `Image.fromSnapshot`) and their warm pools.
'use strict';

const path = require('node:path');
const { native } = require('./native.cjs');
const { call, unsupported } = require('./errors.cjs');
const { INTERNAL, Vm, WarmupVm, noConstructor } = require('./vm.cjs');
const v = require('./validate.cjs');

/** A virtio-fs tag is at most 36 bytes with its NUL. */
const GUEST_TAG_MAX_BYTES = 35;

const guestTag = (value, name) => {
  v.nonEmptyString(value, name);
  const n = Buffer.byteLength(value, 'utf8');
  if (n > GUEST_TAG_MAX_BYTES) {
    throw v.rangeError(name, `A guest tag is at most ${GUEST_TAG_MAX_BYTES} bytes. Received ${n} bytes ('${value}')`);
  }
  return value;
};

const absoluteHostPath = (value, name) => {
  v.hostPath(value, name);
  if (!path.isAbsolute(value)) throw v.valueError(name, `must be an absolute host path. Received '${value}'`);
  return value;
};

const MOUNT = v.object(
  {
    hostPath: absoluteHostPath,
    guestTag,
    symlinks: v.oneOf(['deny', 'opaque', 'follow']),
  },
  { required: ['hostPath', 'guestTag'] },
);

const VOLUME = v.object(
  {
    hostPath: absoluteHostPath,
    guestPath: v.guestPath,
    sizeMib: v.integer({ min: 1, max: 16 * 1024 * 1024 }),
  },
  { required: ['hostPath', 'guestPath'] },
);

const EXTRA_FILE = v.object(
  { hostPath: v.hostPath, guestPath: v.guestPath },
  { required: ['hostPath', 'guestPath'] },
);

const NETWORK_ALLOW = v.object(
  { allow: v.arrayOf(v.nonEmptyString, { nonEmpty: true }) },
  { required: ['allow'] },
);

/** `network`: a boolean, or `{ allow: ['CIDR[:PORTS]', …] }`. */
const network = (value, name) => {
  if (typeof value === 'boolean') return value;
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) return NETWORK_ALLOW(value, name);
  throw v.typeError(name, "a boolean or { allow: ['CIDR[:PORTS]', …] }", value);
};

/** The engine's spelling of a checked `network` option. */
const networkSpec = (n) => {
  if (n === undefined) return undefined;
  if (n === true) return 'public';
  if (n === false) return 'none';
  return `allow=${n.allow.join(',')}`;
};

/** Snapshot names: what the library accepts as a directory name. */
const snapshotName = (value, name) => {
  v.nonEmptyString(value, name);
  if (!/^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/.test(value)) {
    throw v.valueError(
      name,
      `must be letters, digits, '.', '-' and '_' (at most 128, not starting with '.'). Received '${value}'`,
    );
  }
  return value;
};

const BUILD_SCHEMA = {
  ref: v.nonEmptyString,
  source: v.nonEmptyString,
  name: snapshotName,
  memoryMib: v.integer({ min: 64, max: 1024 * 1024 }),
  vcpus: v.integer({ min: 1, max: 64 }),
  cmd: v.arrayOf(v.string, { nonEmpty: true }),
  env: v.envRecord,
  workdir: v.guestPath,
  user: v.nonEmptyString,
  guestPort: v.integer({ min: 1, max: 65535 }),
  listenerRequired: v.boolean,
  extraFiles: v.arrayOf(EXTRA_FILE),
  mounts: v.arrayOf(MOUNT),
  volumes: v.arrayOf(VOLUME),
  warmup: v.fn,
  warmupTag: v.nonEmptyString,
  snapshotsDir: v.hostPath,
  extraKernelArgs: v.stringArray,
  network,
};

function checkBuild(options) {
  const o = v.options(options, BUILD_SCHEMA, 'options');
  if (o.ref === undefined && o.source === undefined) {
    throw v.typeError('options.ref', 'of type string (or give options.source)', undefined);
  }
  const tags = new Set();
  for (const [i, m] of (o.mounts ?? []).entries()) {
    if (tags.has(m.guestTag)) throw v.valueError(`options.mounts[${i}].guestTag`, `repeats '${m.guestTag}'`);
    tags.add(m.guestTag);
  }
  for (const arg of o.extraKernelArgs ?? []) {
    if (/\s/.test(arg) || arg.length === 0) {
      throw v.valueError('options.extraKernelArgs', `must be single tokens without spaces. Received '${arg}'`);
    }
  }
  return o;
}

/**
 * Refuses, before anything boots, what the engine cannot do yet; never
 * ignores it.
 */
function refuseMissingFeatures(o) {
  if (o.mounts?.length) {
    return unsupported('Image.build({ mounts })', 'virtio-fs host directory shares in the engine');
  }
  if (o.volumes?.length) {
    return unsupported('Image.build({ volumes })', 'writable virtio-blk volumes that survive snapshots in the engine');
  }
  return null;
}

const POOL_SCHEMA = {
  min: v.integer({ max: 1024 }),
  max: v.integer({ min: 1, max: 1024 }),
  restoreOnRelease: v.boolean,
  acquireTimeoutMs: v.integer({ max: 2 ** 31 - 1 }),
};

/** Runs the user's warmup on a WarmupVm, keeping what it throws. */
function warmupBridge(warmup) {
  const outcome = { threw: false, error: undefined };
  const run = async (nativeVm) => {
    const vm = new WarmupVm(INTERNAL, nativeVm);
    try {
      await warmup(vm);
    } catch (err) {
      outcome.threw = true;
      outcome.error = err;
      throw err instanceof Error ? err : new Error(String(err));
    }
  };
  return { run, outcome };
}

/** A snapshot VMs are restored from: `Image.build` or `Image.fromSnapshot`. */
class Image {
  #native;

  constructor(token, native) {
    if (token !== INTERNAL) throw noConstructor('Image', 'use Image.build() or Image.fromSnapshot()');
    this.#native = native;
  }

  static [INTERNAL](native) {
    return new Image(INTERNAL, native);
  }

  /**
   * Bakes an image into a snapshot: gets `ref` (from the local store, else
   * the registry), boots it, starts `cmd`, waits for its listener, runs
   * `warmup`, snapshots. Cached by every input: the same build twice
   * boots once.
   */
  static async build(options) {
    const o = checkBuild(options);
    const missing = refuseMissingFeatures(o);
    if (missing) throw missing;
    const args = {
      reference: o.ref,
      source: o.source,
      name: o.name,
      memoryMib: o.memoryMib,
      vcpus: o.vcpus,
      cmd: o.cmd,
      env: o.env,
      workdir: o.workdir,
      user: o.user,
      guestPort: o.guestPort,
      listenerRequired: o.listenerRequired,
      extraFiles: o.extraFiles?.map((f) => ({ hostPath: path.resolve(f.hostPath), guestPath: f.guestPath })),
      warmupTag: o.warmupTag,
      snapshotsDir: o.snapshotsDir === undefined ? undefined : path.resolve(o.snapshotsDir),
      extraKernelArgs: o.extraKernelArgs,
      network: networkSpec(o.network),
    };
    const bridge = o.warmup ? warmupBridge(o.warmup) : null;
    try {
      return new Image(INTERNAL, await call(() => native.NativeImage.build(args, bridge?.run)));
    } catch (err) {
      // A warmup that threw fails the build with what it threw.
      if (bridge?.outcome.threw) throw bridge.outcome.error;
      throw err;
    }
  }

  /** The snapshot in directory `dir` (from `Image.build` or `vm.snapshot`). */
  static async fromSnapshot(dir) {
    const p = path.resolve(v.hostPath(dir, 'dir'));
    return new Image(INTERNAL, await call(() => native.NativeImage.fromSnapshot(p)));
  }

  /** What it was built from (e.g. `docker.io/library/alpine:latest`). */
  get name() {
    return this.#native.name;
  }

  /** The snapshot directory. */
  get snapshotDir() {
    return this.#native.snapshotDir ?? null;
  }

  /** The build key (a hash of every input), for a built image. */
  get key() {
    return this.#native.key ?? null;
  }

  /**
   * A pool of VMs restored from this snapshot: `min` kept idle, at most
   * `max` in existence; `restoreOnRelease` (default true) gives every
   * acquire a fresh copy.
   */
  async pool(options) {
    const o = v.options(options, POOL_SCHEMA, 'options');
    const min = o.min ?? 1;
    const max = o.max ?? Math.max(4, min);
    if (min > max) {
      throw v.rangeError('options.min', `It must be <= options.max (${max}). Received ${min}`);
    }
    const image = this.#native;
    const args = { ...o, min, max };
    return new Pool(INTERNAL, await call(() => image.pool(args)));
  }
}

/** Restored copies of one snapshot, handed out by `acquire()`. */
class Pool {
  #native;
  #closed = false;

  constructor(token, native) {
    if (token !== INTERNAL) throw noConstructor('Pool', 'use image.pool()');
    this.#native = native;
  }

  /**
   * A VM for the caller alone: an idle one at once, else a fresh restore;
   * rejects with SUPERMACHINE_POOL_TIMEOUT after `acquireTimeoutMs` when
   * `max` are in use, SUPERMACHINE_POOL_CLOSED after `shutdown()`.
   */
  async acquire() {
    const pool = this.#native;
    return new Vm(INTERNAL, await call(() => pool.acquire()));
  }

  /** Counts right now: `{ idle, leased, restoring, replaced }`. */
  status() {
    return this.#native.status();
  }

  /** Resolves once `min` VMs are idle (or rejects after `timeoutMs`). */
  async waitReady(options) {
    const o = v.options(options, { timeoutMs: v.integer({ max: 2 ** 31 - 1 }) }, 'options');
    const pool = this.#native;
    await call(() => pool.waitReady(o.timeoutMs ?? 60_000));
  }

  /**
   * Stops the idle VMs and waits for them; acquires fail from now on.
   * VMs handed out run until they are released.
   */
  async shutdown() {
    this.#closed = true;
    const pool = this.#native;
    await call(() => pool.shutdown());
  }

  /** `await using pool = await image.pool()`: shuts it down (once). */
  async [Symbol.asyncDispose]() {
    if (!this.#closed) await this.shutdown();
  }
}

module.exports = { Image, Pool, GUEST_TAG_MAX_BYTES };
