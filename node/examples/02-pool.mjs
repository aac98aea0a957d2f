// node examples/02-pool.mjs
//
// A warm pool: `min` VMs wait restored and idle, `acquire()` hands one out
// at once, `release()` gives it back (restored fresh from the snapshot,
// so nothing one caller did is seen by the next). Several callers at once
// each get their own VM, up to `max`.

import { Image } from '@supermachine/core';

const image = await Image.build({ ref: 'alpine:latest' });
const pool = await image.pool({ min: 2, max: 4, restoreOnRelease: true });

/** @param {number} n */
async function job(n) {
  const vm = await pool.acquire();
  try {
    await vm.writeFile('/tmp/job', `job ${n}\n`);
    const r = await vm.exec({ argv: ['sh', '-c', 'cat /tmp/job; ls /tmp'] });
    return `${vm.id}: ${r.stdout.toString().trim().replace(/\n/g, ' | ')}`;
  } finally {
    await vm.release();
  }
}

for (const line of await Promise.all([1, 2, 3, 4].map(job))) console.log(line);
console.log('pool now', pool.status());
await pool.shutdown();
