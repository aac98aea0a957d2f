// node examples/04-expose-tcp.mjs
//
// A server in the VM reached from the host: bake with
// `listenerRequired: true` so the snapshot is taken once the server
// listens, then publish its port on the host with `vm.exposeTcp()`.
// Connections are carried to the guest's loopback over vsock: the guest
// needs no network, and the host side listens on 127.0.0.1 only.

import { Image } from '@supermachine/core';

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
  console.log(`guest port ${fwd.guestPort} is http://${fwd.host}:${fwd.port}/`);
  const res = await fetch(`http://${fwd.host}:${fwd.port}/os-release`);
  console.log(`${res.status} ${(await res.text()).split('\n')[0]}`);
  await fwd.close();
} finally {
  await vm.release();
  await pool.shutdown();
}
