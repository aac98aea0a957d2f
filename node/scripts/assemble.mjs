// Assembles node/native/ from a source checkout's build outputs: the addon
// (cargo's libsupermachine_node.so, renamed supermachine.node), the
// worker, the static guest agent and, when one is given or found, the
// guest kernel. lib/native.cjs points the library at this directory.
//
//   node scripts/assemble.mjs [--kernel PATH] [--release]
//
// --release makes what `npm pack` should ship: the binaries stripped and
// the kernel compressed with zstd (vmlinux.zst; the library unpacks it
// once into its cache). It needs `strip` (binutils) and `zstd`.
//
// The build outputs are looked for in $CARGO_TARGET_DIR (else the
// workspace's target/): release/ for the addon and worker, release/ for
// supermachine-agent-static (what `cargo xtask setup` puts there) or the
// agent profile's output. Without --kernel, $SUPERMACHINE_KERNEL is copied
// if set; otherwise the library finds its kernel at run time the way the
// CLI does (the kernel cache), and native/ carries none.

import { execFileSync } from 'node:child_process';
import { copyFileSync, chmodSync, existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const pkg = resolve(here, '..');
const workspace = resolve(pkg, '..');
const target = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(workspace, 'target');
const release = join(target, 'release');
const native = join(pkg, 'native');

function arg(name) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

function first(candidates, what, hint) {
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    console.error(`assemble: ${what} not found (looked at ${candidates.join(', ')}); ${hint}`);
    process.exit(1);
  }
  return found;
}

const forRelease = process.argv.includes('--release');

/**
 * Copies through a temp name and renames, so a running node never sees
 * half a file; for --release, `prepare` (strip, compress) works on the
 * temp copy first.
 */
function place(from, name, mode, prepare) {
  const to = join(native, name);
  const tmp = `${to}.tmp-${process.pid}`;
  copyFileSync(from, tmp);
  chmodSync(tmp, mode);
  if (forRelease && prepare) prepare(tmp);
  renameSync(tmp, to);
  console.log(`assemble: ${name} <- ${from} (${statSync(to).size} bytes)`);
}

const strip = (file) => execFileSync('strip', ['--strip-unneeded', file]);
const compress = (file) => {
  execFileSync('zstd', ['-q', '-19', '--rm', '-f', file, '-o', `${file}.zst`]);
  renameSync(`${file}.zst`, file);
};

mkdirSync(native, { recursive: true, mode: 0o755 });
place(
  first([join(release, 'libsupermachine_node.so')], 'the addon', 'cargo build --release -p supermachine-node'),
  'supermachine.node',
  0o755,
  strip,
);
place(
  first([join(release, 'supermachine-worker')], 'the worker', 'cargo build --release -p supermachine-vmm --bin supermachine-worker'),
  'supermachine-worker',
  0o755,
  strip,
);
place(
  first(
    [join(target, 'x86_64-unknown-linux-gnu', 'agent', 'supermachine-agent'), join(release, 'supermachine-agent-static')],
    'the static guest agent',
    'cargo xtask setup builds it',
  ),
  'supermachine-agent-static',
  0o755,
  strip,
);
const kernel = arg('--kernel') ?? process.env.SUPERMACHINE_KERNEL;
if (!kernel) {
  // No kernel this time: one left from an earlier run would be booted
  // instead of the library's usual one.
  for (const name of ['vmlinux', 'vmlinux.zst']) rmSync(join(native, name), { force: true });
} else {
  const packed = kernel.endsWith('.zst') || forRelease;
  // Only one of the two may be there: the library takes vmlinux first.
  rmSync(join(native, packed ? 'vmlinux' : 'vmlinux.zst'), { force: true });
  place(first([kernel], 'the kernel', 'give --kernel PATH'), packed ? 'vmlinux.zst' : 'vmlinux', 0o644, kernel.endsWith('.zst') ? null : compress);
}
