// Writes OCI image layouts for the tests: a ustar writer for the layer,
// then blobs, config, manifest and index.json by the image-spec. Layers
// stay uncompressed (`…layer.v1.tar`): the images are built from host
// binaries, and gzip under emulation would cost the lab minutes for
// nothing the tests look at.

import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync, rmSync, renameSync } from 'node:fs';
import { join } from 'node:path';

const BLOCK = 512;

function octal(n, width) {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

/** One ustar header for `name` (split into prefix/name when long). */
function header({ name, mode, size = 0, type, linkname = '' }) {
  const h = Buffer.alloc(BLOCK, 0);
  let prefix = '';
  let short = name;
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf('/', 154);
    if (cut <= 0 || Buffer.byteLength(name.slice(cut + 1)) > 100) {
      throw new Error(`tar: name too long for ustar: ${name}`);
    }
    prefix = name.slice(0, cut);
    short = name.slice(cut + 1);
  }
  h.write(short, 0, 100, 'utf8');
  h.write(octal(mode, 8), 100, 8, 'ascii');
  h.write(octal(0, 8), 108, 8, 'ascii'); // uid
  h.write(octal(0, 8), 116, 8, 'ascii'); // gid
  h.write(octal(size, 12), 124, 12, 'ascii');
  h.write(octal(0, 12), 136, 12, 'ascii'); // mtime: reproducible layers
  h.fill(' ', 148, 156); // checksum counted as spaces
  h.write(type, 156, 1, 'ascii');
  h.write(linkname, 157, 100, 'utf8');
  h.write('ustar\0', 257, 6, 'ascii');
  h.write('00', 263, 2, 'ascii');
  h.write('root', 265, 32, 'ascii');
  h.write('root', 297, 32, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + ' ', 148, 8, 'ascii');
  return h;
}

/** Builds one layer: add entries, then `finish()` for the tar bytes. */
export class Layer {
  #parts = [];

  dir(name, mode = 0o755) {
    this.#parts.push(header({ name: `${name}/`, mode, type: '5' }));
    return this;
  }

  file(name, data, mode = 0o644) {
    const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data);
    this.#parts.push(header({ name, mode, size: bytes.length, type: '0' }), bytes);
    const pad = (BLOCK - (bytes.length % BLOCK)) % BLOCK;
    if (pad) this.#parts.push(Buffer.alloc(pad, 0));
    return this;
  }

  symlink(name, target) {
    this.#parts.push(header({ name, mode: 0o777, type: '2', linkname: target }));
    return this;
  }

  finish() {
    return Buffer.concat([...this.#parts, Buffer.alloc(BLOCK * 2, 0)]);
  }
}

const sha256 = (b) => createHash('sha256').update(b).digest('hex');

/**
 * Writes an OCI layout at `dir` holding one image (one layer) under `tag`;
 * replaces whatever was there.
 */
export function writeLayout(dir, { tag, layer, config }) {
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  const blobs = join(tmp, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const blob = (bytes) => {
    const hex = sha256(bytes);
    writeFileSync(join(blobs, hex), bytes);
    return { digest: `sha256:${hex}`, size: bytes.length };
  };
  const layerDesc = blob(layer);
  const configJson = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config,
      rootfs: { type: 'layers', diff_ids: [layerDesc.digest] },
    }),
  );
  const configDesc = blob(configJson);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...configDesc },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layerDesc }],
    }),
  );
  const manifestDesc = blob(manifest);
  writeFileSync(join(tmp, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(tmp, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          ...manifestDesc,
          annotations: { 'org.opencontainers.image.ref.name': tag },
        },
      ],
    }),
  );
  rmSync(dir, { recursive: true, force: true });
  renameSync(tmp, dir);
  return manifestDesc.digest;
}
