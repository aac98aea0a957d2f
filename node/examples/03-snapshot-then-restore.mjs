// node examples/03-snapshot-then-restore.mjs
//
// State you make in a running VM can be snapshotted mid-flight and
// restored later, any number of times, as a new image.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Image } from '@supermachine/core';

const image = await Image.build({ ref: 'alpine:latest' });
const pool = await image.pool({ min: 0, max: 1 });

const vm = await pool.acquire();
await vm.writeFile('/root/state.json', JSON.stringify({ step: 1, note: 'made before the snapshot' }));
const scratch = mkdtempSync(join(tmpdir(), 'supermachine-example-'));
const dir = join(scratch, 'after-step-1');
await vm.snapshot(dir); // the VM keeps running
await vm.release();
await pool.shutdown();

// Later (or in another process): restore from the directory.
const restored = await Image.fromSnapshot(dir);
const again = await restored.pool({ min: 0, max: 1 });
const copy = await again.acquire();
console.log('restored state:', (await copy.readFile('/root/state.json')).toString());
await copy.release();
await again.shutdown();
rmSync(scratch, { recursive: true, force: true });
