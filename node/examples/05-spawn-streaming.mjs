// node examples/05-spawn-streaming.mjs
//
// A long-running process with streams: write to its stdin, read its
// stdout chunk by chunk as it comes, wait for its exit. The same child's
// stdout/stderr are also Node Readables (and stdin a Writable), so
// `child.stdout.pipe(process.stdout)` works too.

import { finished } from 'node:stream/promises';
import { Image } from '@supermachine/core';

const image = await Image.build({ ref: 'alpine:latest' });
const pool = await image.pool({ min: 1, max: 1 });
const vm = await pool.acquire();

// Chunk by chunk: a line-numbering filter fed from the host.
const child = await vm.spawn({ argv: ['sh', '-c', 'while read line; do echo "guest got: $line"; done'] });
for (const word of ['one', 'two', 'three']) await child.writeStdin(`${word}\n`);
await child.closeStdin();
for (let chunk; (chunk = await child.readStdout()) !== null; ) process.stdout.write(chunk);
console.log('exit', (await child.wait()).exitCode);

// As streams: pipe a generator's output straight to ours.
const counter = await vm.spawn({ argv: ['sh', '-c', 'for i in 1 2 3; do echo tick $i; sleep 0.2; done'] });
counter.stdout.pipe(process.stdout, { end: false });
await finished(counter.stdout);
console.log('exit', (await counter.wait()).exitCode);

await vm.release();
await pool.shutdown();
