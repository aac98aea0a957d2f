// node examples/04-expose-tcp.mjs
//
// A server in the VM reached from the host: bake with
// `listenerRequired: true` so the snapshot is taken once the server
// listens, then forward a host port to it with `vm.exposeTcp()`.
//
// Not available in this version: `vm.exposeTcp()` rejects with
// SUPERMACHINE_UNSUPPORTED (host-to-guest port forwarding is not in the
// engine yet). This example shows the call and that error.

import { Image, ErrorCodes } from '@supermachine/core';

const image = await Image.build({
  ref: 'alpine:latest',
  name: 'example-expose-tcp',
  cmd: ['httpd', '-f', '-p', '8080', '-h', '/etc'],
  guestPort: 8080,
  listenerRequired: true,
});
const pool = await image.pool({ min: 0, max: 1 });
const vm = await pool.acquire();
try {
  const fwd = await vm.exposeTcp({ guestPort: 8080 });
  const res = await fetch(`http://${fwd.host}:${fwd.port}/os-release`);
  console.log(await res.text());
  await fwd.close();
} catch (e) {
  const err = /** @type {import('@supermachine/core').SupermachineError} */ (e);
  if (err.code !== ErrorCodes.UNSUPPORTED) throw err;
  console.log(`exposeTcp: ${err.code}: ${err.message}`);
} finally {
  await vm.release();
  await pool.shutdown();
}
