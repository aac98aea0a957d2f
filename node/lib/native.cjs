// Loads the native addon and points the library at the worker, guest
// agent and kernel that ship beside it in native/ (the environment
// variables SUPERMACHINE_WORKER, SUPERMACHINE_AGENT and SUPERMACHINE_KERNEL
// still take precedence, as they do for the Rust library).
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const NATIVE_DIR = path.join(__dirname, '..', 'native');
const ADDON = path.join(NATIVE_DIR, 'supermachine.node');

function loadError(code, message) {
  const e = new Error(message);
  e.code = code;
  return e;
}

function load() {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw loadError(
      'ERR_UNSUPPORTED_PLATFORM',
      `@supermachine/core runs on Linux x86-64 with KVM; this is ${process.platform} ${process.arch}`,
    );
  }
  if (!fs.existsSync(ADDON)) {
    throw loadError(
      'SUPERMACHINE_MISSING_BINARY',
      `the native addon is missing (${ADDON}): in a source checkout, build and assemble the package first ` +
        '(cargo xtask setup, then node node/scripts/assemble.mjs)',
    );
  }
  const native = require(ADDON);
  native.setBundleDir(NATIVE_DIR);
  return native;
}

module.exports = { native: load(), NATIVE_DIR };
