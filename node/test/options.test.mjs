// Bad input is refused with a clear, coded Error before anything boots:
// no VM, no KVM needed (these run on any host that loads the addon).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Image, ErrorCodes } from '../index.mjs';

const rejects = (promise, code, pattern) =>
  assert.rejects(promise, (err) => {
    assert.ok(err instanceof Error, `an Error, got ${err}`);
    assert.equal(err.code, code, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  });

test('Image.build refuses unknown option names instead of ignoring them', async () => {
  await rejects(Image.build({ ref: 'alpine:latest', memoryMb: 256 }), 'ERR_INVALID_ARG_VALUE', /memoryMb/);
});

test('Image.build refuses wrong types', async () => {
  await rejects(Image.build({ ref: 42 }), 'ERR_INVALID_ARG_TYPE', /ref/);
  await rejects(Image.build({ ref: 'alpine:latest', cmd: 'sh' }), 'ERR_INVALID_ARG_TYPE', /cmd/);
  await rejects(Image.build({ ref: 'alpine:latest', warmup: 'nope' }), 'ERR_INVALID_ARG_TYPE', /warmup/);
});

test('Image.build needs ref or source', async () => {
  await rejects(Image.build({}), 'ERR_INVALID_ARG_TYPE', /ref/);
});

test('a guestTag over 35 bytes is refused', async () => {
  await rejects(
    Image.build({ ref: 'alpine:latest', mounts: [{ hostPath: '/tmp', guestTag: 'x'.repeat(36) }] }),
    'ERR_OUT_OF_RANGE',
    /35 bytes/,
  );
});

test('mounts and volumes are refused as not supported yet, with the reason', async () => {
  await rejects(
    Image.build({ ref: 'alpine:latest', mounts: [{ hostPath: '/tmp', guestTag: 'data' }] }),
    ErrorCodes.UNSUPPORTED,
    /virtio-fs/,
  );
  await rejects(
    Image.build({ ref: 'alpine:latest', volumes: [{ hostPath: '/tmp/v.img', guestPath: '/data' }] }),
    ErrorCodes.UNSUPPORTED,
    /volumes/,
  );
});

test('a bad network option is refused before anything boots', async () => {
  await rejects(Image.build({ ref: 'alpine:latest', network: 'yes' }), 'ERR_INVALID_ARG_TYPE', /network/);
  await rejects(Image.build({ ref: 'alpine:latest', network: { allow: [] } }), 'ERR_INVALID_ARG_VALUE', /allow/);
  await rejects(Image.build({ ref: 'alpine:latest', network: { deny: ['1.2.3.4'] } }), 'ERR_INVALID_ARG_VALUE', /deny/);
  await rejects(
    Image.build({ ref: 'alpine:latest', network: { allow: ['10.0.0.1/8'] } }),
    'ERR_INVALID_ARG_VALUE',
    /past the prefix/,
  );
});

test('Image.fromSnapshot of a missing directory is ENOENT with the path', async () => {
  await rejects(Image.fromSnapshot('/nonexistent/supermachine-snapshot'), 'ENOENT');
});

test('the classes have no public constructor', () => {
  assert.throws(() => new Image(), (err) => err.code === 'ERR_ILLEGAL_CONSTRUCTOR');
});

test('ErrorCodes lists every code the addon and the package give', async (t) => {
  const { readFileSync, readdirSync, existsSync } = await import('node:fs');
  const { dirname, join } = await import('node:path');
  const { fileURLToPath } = await import('node:url');
  const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
  const native = join(pkg, '..', 'crates', 'node', 'src');
  if (!existsSync(native)) return t.skip('not in a source checkout');
  const known = new Set(Object.values(ErrorCodes));
  const sources = [
    ...readdirSync(native).map((f) => readFileSync(join(native, f), 'utf8')),
    ...readdirSync(join(pkg, 'lib')).map((f) => readFileSync(join(pkg, 'lib', f), 'utf8')),
  ];
  for (const src of sources) {
    for (const [, code] of src.matchAll(/["'](E[A-Z]+|ERR_[A-Z_]+|SUPERMACHINE_[A-Z_]+)["']/g)) {
      assert.ok(known.has(code), `${code} is given but not in ErrorCodes`);
    }
  }
});
