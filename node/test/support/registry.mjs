// A real registry for the tests (the approach of crates/cli/tests/e2e/
// registry.rs): Debian's docker-registry on 127.0.0.1 with its storage in
// a temp dir, and skopeo to push the test layouts into it.

import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync, rmSync, openSync, readFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const REGISTRY_BIN = '/usr/bin/docker-registry';
const SKOPEO_BIN = '/usr/bin/skopeo';

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function answers(port) {
  return new Promise((resolve) => {
    const c = connect(port, '127.0.0.1', () => c.end('GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n'));
    let text = '';
    c.on('data', (d) => (text += d));
    c.on('close', () => resolve(/ 200/.test(text)));
    c.on('error', () => resolve(false));
  });
}

export async function startRegistry() {
  for (const [bin, pkg] of [[REGISTRY_BIN, 'docker-registry'], [SKOPEO_BIN, 'skopeo']]) {
    if (!existsSync(bin)) throw new Error(`${bin} is missing: the tests serve their images from a local registry; apt-get install -y ${pkg}`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'sm-node-registry-'));
  const port = await freePort();
  const config = join(dir, 'config.yml');
  writeFileSync(
    config,
    `version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\nhttp:\n  addr: 127.0.0.1:${port}\n`,
  );
  const log = openSync(join(dir, 'registry.log'), 'w');
  const child = spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', log, log] });
  // Slow under emulation: give it time.
  const deadline = Date.now() + 120_000;
  while (!(await answers(port))) {
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`docker-registry did not come up on 127.0.0.1:${port}:\n${readFileSync(join(dir, 'registry.log'), 'utf8')}`);
    }
    await sleep(100);
  }
  const host = `127.0.0.1:${port}`;
  return {
    host,
    /** The value of SUPERMACHINE_REGISTRY_MIRRORS that serves docker.io from here. */
    mirrors: `docker.io=http://${host}`,
    push(layout, tag, repository) {
      execFileSync(
        SKOPEO_BIN,
        ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:${tag}`, `docker://${host}/${repository}:${tag}`],
        { stdio: ['ignore', 'inherit', 'inherit'] },
      );
    },
    stop() {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
