// The package as a Node user gets it: the tarball `npm pack` made (by
// `cargo xtask node`, named in SUPERMACHINE_PACKED_TARBALL), installed
// into an empty directory with npm and no network, running example 01
// with nothing from this checkout: no SUPERMACHINE_KERNEL/WORKER/AGENT,
// so the kernel, worker and agent are the ones the tarball carries.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { testEnv } from './support/env.mjs';
import { prepare } from './support/images.mjs';
import { startRegistry } from './support/registry.mjs';

const run = promisify(execFile);
const examples = join(dirname(fileURLToPath(import.meta.url)), '..', 'examples');
const tarball = process.env.SUPERMACHINE_PACKED_TARBALL;
// Under `cargo xtask node` the tarball is always there; run by hand
// (`node --test`), the test says what it needs instead of failing.
const skip = !tarball && !process.env.CI ? 'needs SUPERMACHINE_PACKED_TARBALL (cargo xtask node packs it)' : false;
const env = testEnv('package');
let registry;

before(async () => {
  if (skip) return;
  registry = await startRegistry();
  const { alpine } = prepare(join(env.dir, 'layouts'), ['alpine']);
  registry.push(alpine.layout, alpine.tag, alpine.repository);
});

after(() => registry?.stop());

test('the packed tarball installs into an empty directory and runs example 01', { skip }, async () => {
  assert.ok(tarball && existsSync(tarball), `SUPERMACHINE_PACKED_TARBALL=${tarball}: no such tarball`);
  const app = join(env.dir, 'app');
  mkdirSync(app);
  // --offline: a local tarball with no dependencies needs no registry.
  await run('npm', ['install', '--offline', '--no-audit', '--no-fund', tarball], { cwd: app });
  const installed = join(app, 'node_modules', '@supermachine', 'core');
  const native = readdirSync(join(installed, 'native')).sort();
  for (const file of ['supermachine-agent-static', 'supermachine-worker', 'supermachine.node']) {
    assert.ok(native.includes(file), `native/ of the installed package: ${native.join(', ')}`);
  }
  assert.ok(
    native.includes('vmlinux') || native.includes('vmlinux.zst'),
    `the installed package carries a kernel: ${native.join(', ')}`,
  );
  assert.ok(statSync(join(installed, 'native', 'supermachine-worker')).mode & 0o111, 'the worker is executable');

  copyFileSync(join(examples, '01-hello.mjs'), join(app, '01-hello.mjs'));
  const childEnv = { ...process.env, SUPERMACHINE_REGISTRY_MIRRORS: registry.mirrors };
  for (const name of ['SUPERMACHINE_KERNEL', 'SUPERMACHINE_WORKER', 'SUPERMACHINE_AGENT']) delete childEnv[name];
  const { stdout } = await run(process.execPath, ['01-hello.mjs'], { cwd: app, env: childEnv });
  assert.match(stdout, /^hello from Linux \S+ in a microVM$/m);
  assert.match(stdout, /^exit code 0$/m);
});
