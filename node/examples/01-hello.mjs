// node examples/01-hello.mjs
//
// The smallest useful program: bake alpine into a snapshot (once; later
// runs reuse it), restore a VM from it, run one command, give it back.

import { Image } from '@supermachine/core';

const image = await Image.build({ ref: 'alpine:latest' });
const pool = await image.pool({ min: 1, max: 1 });

const vm = await pool.acquire();
const r = await vm.exec({ argv: ['sh', '-c', 'echo hello from $(uname -sr) in a microVM'] });
console.log(r.stdout.toString().trim());
console.log(`exit code ${r.exitCode}`);

await vm.release();
await pool.shutdown();
