// The environment every VM test runs in: its own data, cache and
// snapshot directories under one temp dir (removed at exit), and the
// test images as OCI layouts (see images.mjs), named by `source`.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prepare } from './images.mjs';

/** Sets the directories up; call before the first build. */
export function testEnv(tag) {
  const dir = mkdtempSync(join(tmpdir(), `sm-node-${tag}-`));
  process.env.SUPERMACHINE_DATA_DIR = join(dir, 'data');
  process.env.SUPERMACHINE_CACHE_DIR = join(dir, 'cache');
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return {
    dir,
    snapshotsDir: join(dir, 'snapshots'),
    /** `source` for the image under `key` ('alpine' or 'node'). */
    source(key) {
      const l = prepare(join(dir, 'layouts'), [key])[key];
      return `oci:${l.layout}:${l.tag}`;
    },
  };
}
