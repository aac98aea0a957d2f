// The API against real VMs: one build (with a JS warmup) and one pool,
// then every VM method, errors and their codes. Boots VMs, so it runs
// where KVM does (on this project's hosts, inside `cargo xtask lab`).

import { before, after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Image, ErrorCodes } from '../index.mjs';
import { testEnv } from './support/env.mjs';

const env = testEnv('vm');

/**
 * Runs `fn` with a VM from `pool`, then disposes of it the way
 * `await using` does (Node 20 has Symbol.asyncDispose but not the syntax).
 */
async function withVm(pool, fn) {
  const vm = await pool.acquire();
  try {
    return await fn(vm);
  } finally {
    await vm[Symbol.asyncDispose]();
  }
}

const hasCode = (code) => (err) => {
  assert.ok(err instanceof Error, `an Error, got ${err}`);
  assert.equal(err.code, code, err.message);
  return true;
};

describe('a built image and its pool', () => {
  let image;
  let pool;
  const warmupSaw = {};

  before(async () => {
    image = await Image.build({
      ref: 'alpine:latest',
      source: env.source('alpine'),
      memoryMib: 256,
      snapshotsDir: env.snapshotsDir,
      warmup: async (vm) => {
        const r = await vm.exec({ argv: ['sh', '-c', 'echo warm > /warm.txt; cat /warm.txt'] });
        warmupSaw.stdout = r.stdout.toString();
        await vm.writeFile('/from-warmup.txt', 'written by the warmup\n');
        warmupSaw.read = (await vm.readFile('/from-warmup.txt')).toString();
      },
    });
    pool = await image.pool({ min: 1, max: 2 });
  });

  after(async () => {
    await pool?.shutdown();
  });

  test('the warmup ran on a real VM and its changes are in the snapshot', async () => {
    assert.equal(warmupSaw.stdout, 'warm\n');
    assert.equal(warmupSaw.read, 'written by the warmup\n');
    assert.ok(image.snapshotDir.startsWith(env.snapshotsDir), image.snapshotDir);
    await withVm(pool, async (vm) => {
      assert.equal((await vm.readFile('/warm.txt')).toString(), 'warm\n');
      assert.equal((await vm.readFile('/from-warmup.txt')).toString(), 'written by the warmup\n');
    });
  });

  test('exec returns exit code, stdout and stderr as Buffers, and takes stdin', async () => {
    const vm = await pool.acquire();
    try {
      const r = await vm.exec({ argv: ['sh', '-c', 'echo out; echo err >&2; exit 3'] });
      assert.equal(r.exitCode, 3);
      assert.ok(Buffer.isBuffer(r.stdout));
      assert.equal(r.stdout.toString(), 'out\n');
      assert.equal(r.stderr.toString(), 'err\n');
      const cat = await vm.exec({ argv: ['cat'], stdin: Buffer.from('piped in') });
      assert.equal(cat.stdout.toString(), 'piped in');
      const envd = await vm.exec({ argv: ['sh', '-c', 'echo $GREETING; pwd'], env: { GREETING: 'hi' }, cwd: '/tmp' });
      assert.equal(envd.stdout.toString(), 'hi\n/tmp\n');
      await assert.rejects(vm.exec({ argv: ['sleep', '30'], timeoutMs: 300 }), hasCode('ETIMEDOUT'));
    } finally {
      await vm.release();
    }
  });

  test('16 concurrent execs on one VM all come back right', async () => {
    await withVm(pool, async (vm) => {
      const results = await Promise.all(
        Array.from({ length: 16 }, (_, i) => vm.exec({ argv: ['sh', '-c', `echo ${i}`] })),
      );
      results.forEach((r, i) => assert.equal(r.stdout.toString(), `${i}\n`));
    });
  });

  test('writeFile and readFile round-trip bytes; errors carry codes', async () => {
    await withVm(pool, async (vm) => {
      const bytes = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) & 0xff));
      await vm.writeFile('/tmp/blob.bin', bytes, { mode: 0o600 });
      assert.ok((await vm.readFile('/tmp/blob.bin')).equals(bytes));
      const mode = await vm.exec({ argv: ['stat', '-c', '%a', '/tmp/blob.bin'] });
      assert.equal(mode.stdout.toString(), '600\n');
      await assert.rejects(vm.readFile('/no/such/file'), hasCode('ENOENT'));
      await assert.rejects(vm.readFile('/tmp/blob.bin', { maxBytes: 10 }), hasCode('ERR_FS_FILE_TOO_LARGE'));
    });
  });

  test('spawn: stdin Writable, stdout Readable, wait and kill', async () => {
    await withVm(pool, async (vm) => {
      const child = await vm.spawn({ argv: ['cat'] });
      const chunks = [];
      child.stdout.on('data', (c) => chunks.push(c));
      const ended = new Promise((resolve) => child.stdout.on('end', resolve));
      child.stdin.write('hello ');
      child.stdin.end('streams');
      await ended;
      assert.equal(Buffer.concat(chunks).toString(), 'hello streams');
      assert.equal((await child.wait()).exitCode, 0);

      const sleeper = await vm.spawn({ argv: ['sleep', '60'] });
      await sleeper.kill('SIGKILL');
      const status = await sleeper.wait();
      assert.equal(status.signal, 'SIGKILL');
    });
  });

  test('a released VM answers SUPERMACHINE_VM_RELEASED, and a fresh one is clean', async () => {
    const vm = await pool.acquire();
    await vm.writeFile('/tmp/left-behind', 'x');
    await vm.release();
    assert.equal(vm.released, true);
    await assert.rejects(vm.exec(['true']), hasCode(ErrorCodes.VM_RELEASED));
    await assert.rejects(vm.readFile('/etc/passwd'), hasCode(ErrorCodes.VM_RELEASED));
    await assert.rejects(vm.release(), hasCode(ErrorCodes.VM_RELEASED));
    await withVm(pool, async (next) => {
      await assert.rejects(next.readFile('/tmp/left-behind'), hasCode('ENOENT'));
    });
  });

  test('exposeTcp publishes a guest port until closed or released', async () => {
    const vm = await pool.acquire();
    let released = false;
    try {
      await vm.exec(['sh', '-c', 'mkdir -p /www && echo hi-from-the-guest > /www/i && httpd -p 8080 -h /www']);
      const fwd = await vm.exposeTcp({ guestPort: 8080 });
      assert.equal(fwd.host, '127.0.0.1');
      assert.equal(fwd.guestPort, 8080);
      const res = await fetch(`http://127.0.0.1:${fwd.port}/i`);
      assert.equal(await res.text(), 'hi-from-the-guest\n');
      // The same host port again: taken.
      await assert.rejects(vm.exposeTcp({ guestPort: 8080, hostPort: fwd.port }), hasCode('EADDRINUSE'));
      await assert.rejects(vm.exposeTcp({ guestPort: 0 }), hasCode(ErrorCodes.ERR_OUT_OF_RANGE));
      await fwd.close();
      await assert.rejects(fetch(`http://127.0.0.1:${fwd.port}/i`));
      // A forwarder the handle still holds is closed by its release.
      const kept = await vm.exposeTcp({ guestPort: 8080 });
      assert.equal((await fetch(`http://127.0.0.1:${kept.port}/i`)).status, 200);
      await vm.release();
      released = true;
      await assert.rejects(fetch(`http://127.0.0.1:${kept.port}/i`));
      await assert.rejects(vm.exposeTcp({ guestPort: 8080 }), hasCode(ErrorCodes.VM_RELEASED));
    } finally {
      if (!released) await vm.release();
    }
  });

  test('Image.fromSnapshot pools the same snapshot', async () => {
    const again = await Image.fromSnapshot(image.snapshotDir);
    const p = await again.pool({ min: 0, max: 1 });
    try {
      await withVm(p, async (vm) => {
        assert.equal((await vm.readFile('/warm.txt')).toString(), 'warm\n');
      });
    } finally {
      await p[Symbol.asyncDispose]();
    }
  });

  test('with max VMs out, acquire gives up after acquireTimeoutMs with SUPERMACHINE_POOL_TIMEOUT', async () => {
    // The one VM is restored before the first acquire (waitReady), and
    // not restored on release: no acquire here ever waits on a restore,
    // which a slow or busy host can stretch past 300 ms. Only the acquire
    // while the one VM is held can time out, however fast the host is.
    const p = await image.pool({ min: 1, max: 1, acquireTimeoutMs: 300, restoreOnRelease: false });
    try {
      await p.waitReady();
      const held = await p.acquire();
      await held.writeFile('/tmp/mark', 'held');
      await assert.rejects(p.acquire(), hasCode(ErrorCodes.POOL_TIMEOUT));
      await held.release();
      await withVm(p, async (vm) => {
        assert.equal((await vm.readFile('/tmp/mark')).toString(), 'held');
      });
    } finally {
      await p.shutdown();
    }
  });

  test('a VM whose kernel panicked answers SUPERMACHINE_VM_DIED, and the pool goes on', async () => {
    const p = await image.pool({ min: 0, max: 1 });
    try {
      const vm = await p.acquire();
      // The guest kernel panics at once: the command never answers.
      await assert.rejects(
        vm.exec(['sh', '-c', 'echo c > /proc/sysrq-trigger']),
        hasCode(ErrorCodes.VM_DIED),
      );
      await assert.rejects(vm.readFile('/etc/hostname'), hasCode(ErrorCodes.VM_DIED));
      await vm.release().catch(() => {});
      await withVm(p, async (next) => {
        assert.equal((await next.exec(['echo', 'alive'])).stdout.toString(), 'alive\n');
      });
    } finally {
      await p.shutdown();
    }
  });

  test('after shutdown, acquire fails with SUPERMACHINE_POOL_CLOSED', async () => {
    const p = await image.pool({ min: 0, max: 1 });
    await p.shutdown();
    await assert.rejects(p.acquire(), hasCode(ErrorCodes.POOL_CLOSED));
  });
});

test('a warmup that throws fails the build with what it threw', async () => {
  const thrown = new Error('the warmup says no');
  await assert.rejects(
    Image.build({
      ref: 'alpine:latest',
      source: env.source('alpine'),
      memoryMib: 256,
      snapshotsDir: env.snapshotsDir,
      name: 'throws',
      warmup: async (vm) => {
        await vm.exec(['true']);
        throw thrown;
      },
    }),
    (err) => err === thrown,
  );
});

test('a WarmupVm kept past its warmup answers SUPERMACHINE_WARMUP_OVER', async () => {
  let kept;
  await Image.build({
    ref: 'alpine:latest',
    source: env.source('alpine'),
    memoryMib: 256,
    snapshotsDir: env.snapshotsDir,
    name: 'kept-warmup-vm',
    warmup: async (vm) => {
      kept = vm;
      await vm.exec(['true']);
    },
  });
  await assert.rejects(kept.exec(['true']), hasCode(ErrorCodes.WARMUP_OVER));
  await assert.rejects(kept.readFile('/etc/hostname'), hasCode(ErrorCodes.WARMUP_OVER));
  await assert.rejects(kept.writeFile('/tmp/x', 'x'), hasCode(ErrorCodes.WARMUP_OVER));
});
