// Errors as a Node user expects them: `Error`s with a stable `code`
// (Node's own names where one fits: ENOENT, EACCES, ETIMEDOUT,
// ERR_INVALID_ARG_TYPE, ...; SUPERMACHINE_* otherwise), plus `serialLog`
// (the guest's console log) when a VM died, `path` when the operation had
// one, and `cause` when another error lies behind it.
//
// The addon cannot attach properties to the errors it raises, so it sends
// each failure as JSON in the message behind a marker; fromNative() turns
// that back into a proper Error. See crates/node/src/error.rs.
'use strict';

const { native } = require('./native.cjs');

const MARKER = native.failureMarker();

/** Every code this package uses, by name (also in index.d.ts). */
const ErrorCodes = Object.freeze({
  ENOENT: 'ENOENT',
  EACCES: 'EACCES',
  EEXIST: 'EEXIST',
  ENOTDIR: 'ENOTDIR',
  EISDIR: 'EISDIR',
  ENOTEMPTY: 'ENOTEMPTY',
  EPIPE: 'EPIPE',
  ESRCH: 'ESRCH',
  ETIMEDOUT: 'ETIMEDOUT',
  ERR_INVALID_ARG_TYPE: 'ERR_INVALID_ARG_TYPE',
  ERR_INVALID_ARG_VALUE: 'ERR_INVALID_ARG_VALUE',
  ERR_OUT_OF_RANGE: 'ERR_OUT_OF_RANGE',
  ERR_UNKNOWN_SIGNAL: 'ERR_UNKNOWN_SIGNAL',
  ERR_FS_FILE_TOO_LARGE: 'ERR_FS_FILE_TOO_LARGE',
  UNSUPPORTED: 'SUPERMACHINE_UNSUPPORTED',
  VM_RELEASED: 'SUPERMACHINE_VM_RELEASED',
  VM_DIED: 'SUPERMACHINE_VM_DIED',
  WARMUP_OVER: 'SUPERMACHINE_WARMUP_OVER',
  WARMUP_FAILED: 'SUPERMACHINE_WARMUP_FAILED',
  POOL_TIMEOUT: 'SUPERMACHINE_POOL_TIMEOUT',
  POOL_CLOSED: 'SUPERMACHINE_POOL_CLOSED',
  RESTORE_FAILED: 'SUPERMACHINE_RESTORE_FAILED',
  BOOT_TIMEOUT: 'SUPERMACHINE_BOOT_TIMEOUT',
  NO_LISTENER: 'SUPERMACHINE_NO_LISTENER',
  IMAGE_NOT_FOUND: 'SUPERMACHINE_IMAGE_NOT_FOUND',
  IMAGE: 'SUPERMACHINE_IMAGE',
  BAD_SNAPSHOT: 'SUPERMACHINE_BAD_SNAPSHOT',
  NO_KVM: 'SUPERMACHINE_NO_KVM',
  KERNEL_MISSING: 'SUPERMACHINE_KERNEL_MISSING',
  MISSING_BINARY: 'SUPERMACHINE_MISSING_BINARY',
  GUEST_FAILED: 'SUPERMACHINE_GUEST_FAILED',
  PROTOCOL: 'SUPERMACHINE_PROTOCOL',
  INTERNAL: 'SUPERMACHINE_INTERNAL',
  EPERM: 'EPERM',
  ENOSPC: 'ENOSPC',
  ECONNREFUSED: 'ECONNREFUSED',
  EADDRINUSE: 'EADDRINUSE',
  EADDRNOTAVAIL: 'EADDRNOTAVAIL',
  ERR_ILLEGAL_CONSTRUCTOR: 'ERR_ILLEGAL_CONSTRUCTOR',
  ERR_UNSUPPORTED_PLATFORM: 'ERR_UNSUPPORTED_PLATFORM',
  HOST_TOOL: 'SUPERMACHINE_HOST_TOOL',
  IO: 'SUPERMACHINE_IO',
  LIST_LIMIT: 'SUPERMACHINE_LIST_LIMIT',
  VOLUME_IN_USE: 'SUPERMACHINE_VOLUME_IN_USE',
  REGISTRY_AUTH: 'SUPERMACHINE_REGISTRY_AUTH',
  UNSAFE_RUNTIME_DIR: 'SUPERMACHINE_UNSAFE_RUNTIME_DIR',
  VERSION_MISMATCH: 'SUPERMACHINE_VERSION_MISMATCH',
});

/** An Error with a code and, where given, serialLog / path / cause. */
function makeError(code, message, extra = {}, Kind = Error) {
  const { cause, ...props } = extra;
  const e = cause === undefined ? new Kind(message) : new Kind(message, { cause });
  e.code = code;
  for (const [k, v] of Object.entries(props)) {
    if (v !== undefined) e[k] = v;
  }
  return e;
}

function fromFailure(f) {
  return makeError(f.code, f.message, {
    serialLog: f.serialLog,
    path: f.path,
    cause: f.cause ? fromFailure(f.cause) : undefined,
  });
}

/** The Error a native call's rejection stands for. */
function fromNative(err) {
  if (err instanceof Error && typeof err.message === 'string' && err.message.startsWith(MARKER)) {
    try {
      return fromFailure(JSON.parse(err.message.slice(MARKER.length)));
    } catch {
      // Not ours after all: pass it on unchanged.
    }
  }
  return err;
}

/** Runs a native call and awaits it, translating what it throws. */
async function call(fn) {
  try {
    return await fn();
  } catch (err) {
    throw fromNative(err);
  }
}

function unsupported(what, missing) {
  return makeError(
    ErrorCodes.UNSUPPORTED,
    `${what} is not supported yet: it needs ${missing}, which this version of supermachine does not have`,
  );
}

module.exports = { ErrorCodes, makeError, fromNative, call, unsupported };
