// The images the tests and examples use, under the names the examples
// use. No machine here reaches Docker Hub, so they are built offline from
// this host's own binaries and served from a local registry:
//
//   alpine:latest   Debian's busybox-static with its applets (an
//                   Alpine-like shell userland; not Alpine)
//   node:20-alpine  the host's node binary (nodesource's Node 20) with the
//                   shared libraries it links, plus busybox (not Alpine)
//
// `node images.mjs prepare DIR` writes their OCI layouts into DIR (cached
// by the inputs' sizes and mtimes); the test runner pushes them.

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, realpathSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Layer, writeLayout } from './oci.mjs';

const BUSYBOX = '/bin/busybox';
const NODE = '/usr/bin/node';

const PASSWD = 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n';
const GROUP = 'root:x:0:\nnogroup:x:65534:\n';

/** The directories and files every test image has (busybox userland). */
function busyboxBase() {
  if (!existsSync(BUSYBOX)) {
    throw new Error(`${BUSYBOX} is missing: apt-get install -y busybox-static`);
  }
  const layer = new Layer();
  for (const d of ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'usr/local', 'usr/local/bin', 'etc', 'root', 'home', 'dev', 'proc', 'sys', 'run', 'mnt', 'srv']) {
    layer.dir(d);
  }
  layer.dir('tmp', 0o1777);
  layer.file('bin/busybox', readFileSync(BUSYBOX), 0o755);
  const applets = execFileSync(BUSYBOX, ['--list-full'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  for (const applet of applets) {
    if (applet === 'bin/busybox') continue;
    const depth = applet.split('/').length - 1;
    layer.symlink(applet, `${'../'.repeat(depth)}bin/busybox`);
  }
  layer.file('etc/passwd', PASSWD).file('etc/group', GROUP);
  layer.file('etc/hosts', '127.0.0.1 localhost\n::1 localhost\n');
  return layer;
}

/** The shared libraries `binary` loads, as (path in the image, host file). */
function sharedLibraries(binary) {
  const out = execFileSync('ldd', [binary], { encoding: 'utf8' });
  const libs = [];
  for (const line of out.split('\n')) {
    const m = line.match(/=>\s+(\/\S+)/) ?? line.match(/^\s*(\/\S+)\s+\(/);
    if (m) libs.push(m[1]);
  }
  return libs.map((p) => [p.replace(/^\//, ''), realpathSync(p)]);
}

export const IMAGES = {
  alpine: {
    repository: 'library/alpine',
    tag: 'latest',
    inputs: [BUSYBOX],
    build() {
      const layer = busyboxBase();
      layer.file('etc/os-release', 'NAME="supermachine test image (busybox-static)"\nID=busybox\n');
      return {
        layer: layer.finish(),
        config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] },
      };
    },
  },
  node: {
    repository: 'library/node',
    tag: '20-alpine',
    inputs: [BUSYBOX, NODE],
    build() {
      const layer = busyboxBase();
      layer.file('etc/os-release', 'NAME="supermachine test image (host node + busybox-static)"\nID=busybox\n');
      const dirs = new Set();
      for (const [inImage, host] of sharedLibraries(NODE)) {
        const parts = inImage.split('/');
        for (let i = 1; i < parts.length; i++) {
          const d = parts.slice(0, i).join('/');
          if (!dirs.has(d) && !['usr', 'usr/local', 'usr/local/bin'].includes(d)) {
            dirs.add(d);
            layer.dir(d);
          }
        }
        layer.file(inImage, readFileSync(host), 0o755);
      }
      layer.file('usr/local/bin/node', readFileSync(NODE), 0o755);
      return {
        layer: layer.finish(),
        config: {
          Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'NODE_VERSION=20'],
          Cmd: ['node'],
        },
      };
    },
  },
};

function stamp(inputs) {
  return inputs.map((p) => {
    const s = statSync(p);
    return `${p} ${s.size} ${s.mtimeMs}`;
  }).join('\n');
}

/** Writes (or keeps) the OCI layouts of the images `keys` (default all) under `dir`. */
export function prepare(dir, keys = Object.keys(IMAGES)) {
  mkdirSync(dir, { recursive: true });
  const layouts = {};
  for (const key of keys) {
    const image = IMAGES[key];
    const layout = join(dir, key);
    const stampFile = join(dir, `${key}.stamp`);
    const want = stamp(image.inputs);
    const have = existsSync(stampFile) ? readFileSync(stampFile, 'utf8') : '';
    if (have !== want || !existsSync(join(layout, 'index.json'))) {
      const { layer, config } = image.build();
      writeLayout(layout, { tag: image.tag, layer, config });
      writeFileSync(stampFile, want);
    }
    layouts[key] = { layout, repository: image.repository, tag: image.tag };
  }
  return layouts;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href && process.argv[2] === 'prepare') {
  const dir = process.argv[3];
  if (!dir) {
    console.error('usage: node images.mjs prepare DIR');
    process.exit(2);
  }
  const layouts = prepare(dir);
  for (const [key, l] of Object.entries(layouts)) console.log(`${key}\t${l.layout}`);
}
