// The package's examples, run as a user runs them (`node examples/X.mjs`),
// each in its own process, against real VMs. `alpine:latest` comes from a
// local registry (see support/registry.mjs) through
// SUPERMACHINE_REGISTRY_MIRRORS: no machine here reaches Docker Hub, and
// the image under that name is busybox-static, not Alpine.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { testEnv } from './support/env.mjs';
import { prepare } from './support/images.mjs';
import { startRegistry } from './support/registry.mjs';

const run = promisify(execFile);
const examples = join(dirname(fileURLToPath(import.meta.url)), '..', 'examples');
const env = testEnv('examples');
let registry;

before(async () => {
  registry = await startRegistry();
  const { alpine } = prepare(join(env.dir, 'layouts'), ['alpine']);
  registry.push(alpine.layout, alpine.tag, alpine.repository);
});

after(() => registry?.stop());

/** Runs one example to its end; resolves with its stdout. */
async function example(file) {
  const { stdout } = await run(process.execPath, [join(examples, file)], {
    env: { ...process.env, SUPERMACHINE_REGISTRY_MIRRORS: registry.mirrors },
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

test('01-hello runs a command in a VM', async () => {
  const out = await example('01-hello.mjs');
  assert.match(out, /^hello from Linux \S+ in a microVM$/m);
  assert.match(out, /^exit code 0$/m);
});

test('02-pool serves four jobs, each VM fresh', async () => {
  const out = await example('02-pool.mjs');
  for (const n of [1, 2, 3, 4]) assert.match(out, new RegExp(`: job ${n} \\| job$`, 'm'));
});

test('03-snapshot-then-restore restores state made before the snapshot', async () => {
  const out = await example('03-snapshot-then-restore.mjs');
  assert.match(out, /restored state: \{"step":1,"note":"made before the snapshot"\}/);
});

test('04-expose-tcp reaches the baked server through a published port', async () => {
  const out = await example('04-expose-tcp.mjs');
  assert.match(out, /^guest port 8080 is http:\/\/127\.0\.0\.1:\d+\/$/m);
  assert.match(out, /^200 NAME="supermachine test image \(busybox-static\)"$/m);
});

test('05-spawn-streaming streams stdin and stdout', async () => {
  const out = await example('05-spawn-streaming.mjs');
  assert.match(out, /guest got: one\nguest got: two\nguest got: three\nexit 0\n/);
  assert.match(out, /tick 1\ntick 2\ntick 3\nexit 0\n/);
});

test('06-mount-workspace', { skip: 'waits for mounts in Image.build bakes and pools (issue 19; mounts work in booted VMs)' }, () => {});
test('07-npm-workspace-fast', { skip: 'waits for mounts in bakes and volumes in snapshots (issues 19, 20; volumes work in booted VMs, the guest network is in)' }, () => {});
