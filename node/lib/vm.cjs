// VMs as JavaScript holds them: `Vm` (from `pool.acquire()`), `WarmupVm`
// (given to an `Image.build` warmup) and the processes they spawn
// (`ExecChild`, whose stdout/stderr are Readables and stdin a Writable).
'use strict';

const os = require('node:os');
const path = require('node:path');
const { Readable, Writable } = require('node:stream');
const { ErrorCodes, makeError, call } = require('./errors.cjs');
const v = require('./validate.cjs');

/** Guards the constructors: objects of this package come from its API. */
const INTERNAL = Symbol('supermachine.internal');

function noConstructor(name, how) {
  return makeError(
    'ERR_ILLEGAL_CONSTRUCTOR',
    `${name} has no public constructor: ${how}`,
    {},
    TypeError,
  );
}

const SIGNALS = os.constants.signals;
const SIGNAL_NAMES = new Map(Object.entries(SIGNALS).map(([name, n]) => [n, name]));

/** 'SIGTERM' or 15 → 15 (Linux numbers, the guest's too). */
function signalNumber(sig, name) {
  if (typeof sig === 'number' && Number.isInteger(sig) && sig >= 1 && sig <= 64) return sig;
  if (typeof sig === 'string' && Object.hasOwn(SIGNALS, sig)) return SIGNALS[sig];
  throw makeError('ERR_UNKNOWN_SIGNAL', `Unknown signal: ${String(sig)} (${name})`, {}, TypeError);
}

/** How a process ended, as a Node user reads it. */
function exitStatus(s) {
  return {
    exitCode: s.exitCode ?? null,
    signal: s.signal == null ? null : (SIGNAL_NAMES.get(s.signal) ?? `SIG${s.signal}`),
    timedOut: Boolean(s.timedOut),
    stdoutDropped: s.stdoutDropped ?? 0,
    stderrDropped: s.stderrDropped ?? 0,
  };
}

function timedOut(argv, ms, result) {
  return makeError(
    ErrorCodes.ETIMEDOUT,
    `${argv[0]} ran past its timeoutMs (${ms} ms) and was killed with its whole session`,
    { result, stdout: result.stdout, stderr: result.stderr },
  );
}

const EXEC_FIELDS = {
  argv: v.arrayOf(v.string, { nonEmpty: true }),
  env: v.envRecord,
  cwd: v.guestPath,
  user: v.nonEmptyString,
  timeoutMs: v.integer({ min: 1, max: 2 ** 31 - 1 }),
  stdoutLimit: v.integer(),
  stderrLimit: v.integer(),
};
const EXEC_SCHEMA = { ...EXEC_FIELDS, stdin: v.bytes };
const SPAWN_SCHEMA = EXEC_FIELDS;
const WRITE_SCHEMA = {
  mode: v.integer({ min: 0, max: 0o7777 }),
  append: v.boolean,
  createParents: v.boolean,
};
/** readFile's cap by default: Node's own fs.readFile limit. */
const READ_LIMIT = 2 ** 31 - 1;
const READ_SCHEMA = { maxBytes: v.integer({ max: READ_LIMIT }) };
const EXPOSE_SCHEMA = {
  guestPort: v.integer({ min: 1, max: 65535 }),
  hostPort: v.integer({ min: 0, max: 65535 }),
  host: v.nonEmptyString,
};

/** `vm.exec(['true'])` is `vm.exec({ argv: ['true'] })`. */
function execOptions(arg, schema, name) {
  const given = Array.isArray(arg) ? { argv: arg } : arg;
  const o = v.options(given, schema, name, { required: ['argv'] });
  const args = {
    argv: o.argv,
    env: o.env,
    cwd: o.cwd,
    user: o.user,
    timeoutMs: o.timeoutMs,
    stdoutLimit: o.stdoutLimit,
    stderrLimit: o.stderrLimit,
  };
  return { args, stdin: o.stdin };
}

/** What both VM handles offer (exec, writeFile, readFile). */
class VmOperations {
  #native;

  constructor(native) {
    this.#native = native;
  }

  /**
   * Runs a command to its end. Resolves with its exit and output (a
   * non-zero exit is not an error); rejects with ETIMEDOUT when it ran
   * past `timeoutMs` (the error carries what it printed).
   */
  async exec(options) {
    const { args, stdin } = execOptions(options, EXEC_SCHEMA, 'options');
    const native = this.#native;
    const out = await call(() => native.exec(args, stdin));
    const result = { ...exitStatus(out.status), stdout: out.stdout, stderr: out.stderr };
    if (result.timedOut) throw timedOut(args.argv, args.timeoutMs, result);
    return result;
  }

  /** Creates or replaces a guest file (it appears whole or not at all). */
  async writeFile(file, data, options) {
    const p = v.guestPath(file, 'path');
    const bytes = v.bytes(data, 'data');
    const o = v.options(options, WRITE_SCHEMA, 'options');
    const native = this.#native;
    await call(() => native.writeFile(p, bytes, o));
  }

  /** A guest file's contents, as a Buffer (at most `maxBytes`). */
  async readFile(file, options) {
    const p = v.guestPath(file, 'path');
    const o = v.options(options, READ_SCHEMA, 'options');
    const native = this.#native;
    return call(() => native.readFile(p, o.maxBytes ?? READ_LIMIT));
  }
}

/** A VM handed out by `pool.acquire()`; give it back with `release()`. */
class Vm extends VmOperations {
  #native;

  constructor(token, native) {
    if (token !== INTERNAL) throw noConstructor('Vm', 'get one from pool.acquire()');
    super(native);
    this.#native = native;
  }

  /** The VM's short id. */
  get id() {
    return this.#native.id;
  }

  /** Whether `release()` was called. */
  get released() {
    return this.#native.released;
  }

  /** Starts a command with streams: see `ExecChild`. */
  async spawn(options) {
    const { args } = execOptions(options, SPAWN_SCHEMA, 'options');
    const native = this.#native;
    const child = await call(() => native.spawn(args));
    return new ExecChild(INTERNAL, child, args);
  }

  /**
   * Snapshots the running VM into the directory `dir` (which must not
   * exist; relative to the current directory); the VM runs on. Resolves
   * with the snapshot as an Image (pool it, or `Image.fromSnapshot(dir)`
   * later).
   */
  async snapshot(dir) {
    const target = path.resolve(v.hostPath(dir, 'dir'));
    const native = this.#native;
    const image = await call(() => native.snapshot(target));
    const { Image } = require('./image.cjs');
    return Image[INTERNAL](image);
  }

  /**
   * Publishes a guest TCP port on the host: connections to the returned
   * forwarder's `host:port` (127.0.0.1 and a free port unless given)
   * reach `guestPort` on the guest's loopback, carried over vsock (the
   * guest needs no network). A connection made while nothing listens in
   * the guest is reset. The port stays published until `close()`, or
   * until this VM handle is released.
   */
  async exposeTcp(options) {
    v.options(options, EXPOSE_SCHEMA, 'options', { required: ['guestPort'] });
    const native = this.#native;
    const args = {
      guestPort: options.guestPort,
      hostPort: options.hostPort,
      host: options.host,
    };
    const fwd = await call(() => native.exposeTcp(args));
    return new TcpForwarder(INTERNAL, {
      host: fwd.host,
      port: fwd.port,
      guestPort: fwd.guestPort,
      close: () => call(() => fwd.close()),
    });
  }

  /**
   * Gives the VM back to its pool. Whatever this handle still runs in it
   * (execs, spawned processes) is ended first; every later call on this
   * handle rejects with SUPERMACHINE_VM_RELEASED.
   */
  async release() {
    const native = this.#native;
    await call(() => native.release());
  }

  /** `await using vm = await pool.acquire()`: releases it (once). */
  async [Symbol.asyncDispose]() {
    if (!this.released) await this.release();
  }
}

/** The VM an `Image.build` warmup gets; valid while the warmup runs. */
class WarmupVm extends VmOperations {
  constructor(token, native) {
    if (token !== INTERNAL) throw noConstructor('WarmupVm', 'Image.build passes one to its warmup');
    super(native);
  }
}

/**
 * A process started by `vm.spawn()`. Read its output chunk by chunk
 * (`readStdout()` / `readStderr()`) or as Node streams (`stdout`, `stderr`:
 * Readables; `stdin`: a Writable) — one way per stream. Output you never
 * asked for is thrown away when you `wait()`, so it cannot hold the
 * process back.
 */
class ExecChild {
  #native;
  #argv;
  #timeoutMs;
  #claimed = { stdout: false, stderr: false };
  #streams = {};

  constructor(token, native, args) {
    if (token !== INTERNAL) throw noConstructor('ExecChild', 'get one from vm.spawn()');
    this.#native = native;
    this.#argv = args.argv;
    this.#timeoutMs = args.timeoutMs;
  }

  /** Its pid in the guest; null when the program could not start. */
  get pid() {
    return this.#native.pid ?? null;
  }

  /** Writes to its stdin; resolves once the bytes are on their way. */
  async writeStdin(data) {
    const bytes = v.bytes(data, 'data');
    const native = this.#native;
    await call(() => native.writeStdin(bytes));
  }

  /** Ends its stdin (after what was written). */
  async closeStdin() {
    const native = this.#native;
    await call(() => native.closeStdin());
  }

  /** The next stdout chunk, or null at the end. */
  async readStdout() {
    this.#claimed.stdout = true;
    const native = this.#native;
    return call(() => native.readStdout());
  }

  /** The next stderr chunk, or null at the end. */
  async readStderr() {
    this.#claimed.stderr = true;
    const native = this.#native;
    return call(() => native.readStderr());
  }

  #readable(which) {
    if (!this.#streams[which]) {
      this.#claimed[which] = true;
      const native = this.#native;
      const read = which === 'stdout' ? () => native.readStdout() : () => native.readStderr();
      const discard = which === 'stdout' ? () => native.discardStdout() : () => native.discardStderr();
      this.#streams[which] = new Readable({
        // One chunk (up to 64 KiB) is asked of the addon only when the
        // stream has room: a reader that stops stops the guest's writer.
        highWaterMark: 64 * 1024,
        read() {
          call(read).then(
            (chunk) => this.push(chunk ?? null),
            (err) => this.destroy(err),
          );
        },
        destroy(err, done) {
          // Nobody reads any more: throw the rest away instead of letting
          // it hold the process back.
          call(discard).then(
            () => done(err),
            () => done(err),
          );
        },
      });
    }
    return this.#streams[which];
  }

  /** Its stdout as a Readable (`child.stdout.pipe(process.stdout)`). */
  get stdout() {
    return this.#readable('stdout');
  }

  /** Its stderr as a Readable. */
  get stderr() {
    return this.#readable('stderr');
  }

  /** Its stdin as a Writable; `end()` closes it. */
  get stdin() {
    if (!this.#streams.stdin) {
      const native = this.#native;
      this.#streams.stdin = new Writable({
        highWaterMark: 64 * 1024,
        write(chunk, _encoding, done) {
          call(() => native.writeStdin(chunk)).then(() => done(), done);
        },
        final(done) {
          call(() => native.closeStdin()).then(() => done(), done);
        },
        destroy(err, done) {
          call(() => native.closeStdin()).then(
            () => done(err),
            () => done(err),
          );
        },
      });
    }
    return this.#streams.stdin;
  }

  /**
   * Waits for it to end: `{ exitCode, signal, timedOut, ... }`. Rejects
   * with ETIMEDOUT when it ran past `timeoutMs`.
   */
  async wait() {
    const native = this.#native;
    const discards = [];
    if (!this.#claimed.stdout) discards.push(call(() => native.discardStdout()));
    if (!this.#claimed.stderr) discards.push(call(() => native.discardStderr()));
    await Promise.all(discards);
    const status = exitStatus(await call(() => native.wait()));
    if (status.timedOut) throw timedOut(this.#argv, this.#timeoutMs, status);
    return status;
  }

  /** Sends `signal` (default SIGTERM), like `ChildProcess.kill`. */
  async kill(signal = 'SIGTERM') {
    const n = signalNumber(signal, 'signal');
    const native = this.#native;
    await call(() => native.signal(n));
  }

  /** Sends a signal, by name ('SIGINT') or number. */
  async signal(signal) {
    return this.kill(signalNumber(signal, 'signal'));
  }
}

/**
 * A host TCP port forwarded to a guest port (`vm.exposeTcp()`).
 */
class TcpForwarder {
  #host;
  #port;
  #guestPort;
  #close;

  constructor(token, { host, port, guestPort, close }) {
    if (token !== INTERNAL) throw noConstructor('TcpForwarder', 'vm.exposeTcp() makes one');
    this.#host = host;
    this.#port = port;
    this.#guestPort = guestPort;
    this.#close = close;
  }

  /** The host address it listens on. */
  get host() {
    return this.#host;
  }

  /** The host port it listens on. */
  get port() {
    return this.#port;
  }

  /** The guest port it forwards to. */
  get guestPort() {
    return this.#guestPort;
  }

  /** Stops listening (the port is free when this resolves) and ends its connections. */
  async close() {
    await this.#close();
  }
}

module.exports = { INTERNAL, Vm, WarmupVm, ExecChild, TcpForwarder, noConstructor };
