// What happens around the API calls: a slow JavaScript reader holds the
// guest's writer back (nothing piles up in between), and a Node process
// that exits with VMs still running leaves no worker behind. Boots VMs.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Image } from '../index.mjs';
import { testEnv } from './support/env.mjs';

const env = testEnv('lifecycle');
let image;
let pool;

before(async () => {
  image = await Image.build({ ref: 'alpine:latest', source: env.source('alpine'), memoryMib: 256, snapshotsDir: env.snapshotsDir });
  pool = await image.pool({ min: 0, max: 1 });
});

after(async () => {
  await pool?.shutdown();
});

/** Polls `read` until two reads in a row agree; returns that value. */
async function settled(read) {
  let last = await read();
  for (;;) {
    await sleep(500);
    const now = await read();
    if (now === last) return now;
    last = now;
  }
}

test('a reader that stops stops the guest writer; reading again gets every byte', async () => {
  // 16 MiB in 64 KiB writes; what sits between the writer and JavaScript
  // (the guest pipe, the vsock credit, the library's 8-chunk channel) is
  // well under 4 MiB.
  const CHUNKS = 256;
  const vm = await pool.acquire();
  try {
    const child = await vm.spawn({
      argv: ['sh', '-c', `n=0; while [ $n -lt ${CHUNKS} ]; do head -c 65536 /dev/zero; n=$((n+1)); echo $n > /tmp/progress; done`],
    });
    const progress = async () => {
      const r = await vm.exec({ argv: ['sh', '-c', 'cat /tmp/progress 2>/dev/null || echo 0'] });
      return Number(r.stdout.toString().trim());
    };
    // Nobody reads: the writer must stall well short of the end (pipe,
    // vsock credit and the addon's bounded channel: a few MiB at most).
    const stalledAt = await settled(progress);
    assert.ok(stalledAt < CHUNKS / 4, `the guest wrote ${stalledAt} of ${CHUNKS} chunks with nobody reading`);
    let total = 0;
    for await (const chunk of child.stdout) total += chunk.length;
    assert.equal(total, CHUNKS * 65536);
    assert.equal((await child.wait()).exitCode, 0);
  } finally {
    await vm.release();
  }
});

/**
 * The supermachine workers owned by process `owner`: each is started with
 * `--owned-by-parent <owner pid>` (and dies with it), which stays in its
 * command line after the owner is gone.
 */
function workersOf(owner) {
  const found = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`).toString().split('\0');
      const i = argv.indexOf('--owned-by-parent');
      if (argv[0].endsWith('supermachine-worker') && i > 0 && argv[i + 1] === String(owner)) found.push(Number(pid));
    } catch {
      // Gone meanwhile.
    }
  }
  return found;
}

/** Every worker on the machine with its owner, for a failure's message. */
function allWorkers() {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map((pid) => {
      try {
        return `${pid}: ${readFileSync(`/proc/${pid}/cmdline`).toString().replaceAll('\0', ' ').slice(0, 300)}`;
      } catch {
        return '';
      }
    })
    .filter((l) => l.includes('supermachine-worker'));
}

// The child keeps its pool and VM reachable (`globalThis.kept`): an
// unreachable Pool or Vm is garbage collected, and its finalizer stops
// its workers. Before it did, this check failed now and then (2026-12-07:
// one lab run in five showed no worker of the child; `global.gc()` in the
// child made it every time) because the collector had already done what
// this test wants the process's exit to do.
test('a process that exits with live VMs leaves no worker behind', async () => {
  const script = `
    import { Image } from ${JSON.stringify(new URL('../index.mjs', import.meta.url).href)};
    const image = await Image.fromSnapshot(${JSON.stringify(image.snapshotDir)});
    const pool = await image.pool({ min: 2, max: 3 });
    const vm = await pool.acquire();
    await vm.exec(['true']);
    await pool.waitReady({ timeoutMs: 600000 });
    globalThis.kept = { pool, vm };
    console.log('running');
    // Exit, VMs and all, once told to.
    process.stdin.once('data', () => process.exit(0));
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = once(child, 'exit');
  const workers = () => workersOf(child.pid);
  try {
    const [line] = await once(child.stdout, 'data');
    assert.equal(line.toString().trim(), 'running');
    // Its workers are there now (which is what makes the check below mean
    // something).
    assert.ok(
      workers().length >= 3,
      `the child (${child.pid}) has workers ${workers()}; ${readdirSync('/proc').length} /proc entries; all workers:\n${allWorkers().join('\n')}`,
    );
    child.stdin.write('exit\n');
    const [code] = await exited;
    assert.equal(code, 0);
  } finally {
    // A failed check must not leave it waiting on its stdin forever.
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  // The workers go once their owner has: poll until none is left (a
  // deadline only bounds a failure).
  const deadline = Date.now() + 120_000;
  let left = workers();
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(200);
    left = workers();
  }
  assert.deepEqual(left, [], 'workers still running after their Node process exited');
});
