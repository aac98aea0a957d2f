// Uses every declaration of index.d.ts the way a TypeScript user would,
// so `tsc --noEmit --strict -p types-check` fails when the declarations
// and the API drift apart. Never run, only checked.

import {
  Image,
  Pool,
  Vm,
  WarmupVm,
  ExecChild,
  TcpForwarder,
  ErrorCodes,
  type BuildOptions,
  type PoolOptions,
  type PoolStatus,
  type ExecOptions,
  type SpawnOptions,
  type ExecResult,
  type ExitStatus,
  type ExtraFile,
  type MountSpec,
  type VolumeSpec,
  type WriteFileOptions,
  type ReadFileOptions,
  type ExposeTcpOptions,
  type ErrorCode,
  type SupermachineError,
  type ExecTimeoutError,
} from '@supermachine/core';
import cjs = require('@supermachine/core');

export async function everything(): Promise<void> {
  const extra: ExtraFile = { hostPath: '/etc/hosts', guestPath: '/etc/hosts' };
  const mount: MountSpec = { hostPath: '/srv', guestTag: 'srv', symlinks: 'opaque' };
  const volume: VolumeSpec = { hostPath: '/tmp/v.img', guestPath: '/data', sizeMib: 64 };
  const build: BuildOptions = {
    ref: 'alpine:latest',
    name: 'typed',
    memoryMib: 256,
    cmd: ['sh'],
    guestPort: 8080,
    listenerRequired: false,
    extraFiles: [extra],
    mounts: [mount],
    volumes: [volume],
    warmupTag: 'v1',
    snapshotsDir: '/tmp/snapshots',
    extraKernelArgs: ['quiet'],
    warmup: async (vm: WarmupVm) => {
      const r: ExecResult = await vm.exec({ argv: ['true'] });
      await vm.writeFile('/x', 'y');
      const b: Buffer = await vm.readFile('/x');
      void r, b;
    },
  };
  const image: Image = await Image.build(build);
  const again: Image = await Image.fromSnapshot('/tmp/snap');
  void again;
  const poolOptions: PoolOptions = { min: 1, max: 2, restoreOnRelease: true };
  const pool: Pool = await image.pool(poolOptions);
  const status: PoolStatus = pool.status();
  void status;
  await pool.waitReady({ timeoutMs: 1000 });

  const vm: Vm = await pool.acquire();
  const execOptions: ExecOptions = { argv: ['echo', 'hi'], env: { A: '1' }, cwd: '/', timeoutMs: 1000, stdin: 'in' };
  const result: ExecResult = await vm.exec(execOptions);
  const code: number | null = result.exitCode;
  const out: string = result.stdout.toString();
  void code, out;
  await vm.exec(['true']);

  const spawnOptions: SpawnOptions = { argv: ['cat'] };
  const child: ExecChild = await vm.spawn(spawnOptions);
  child.stdout.pipe(process.stdout);
  child.stderr.pipe(process.stderr);
  child.stdin.end('x');
  await child.writeStdin(new Uint8Array([1]));
  await child.closeStdin();
  const chunk: Buffer | null = await child.readStdout();
  const errChunk: Buffer | null = await child.readStderr();
  void chunk, errChunk;
  await child.kill('SIGTERM');
  await child.signal(9);
  const exit: ExitStatus = await child.wait();
  const pid: number | null = child.pid;
  void exit, pid;

  const w: WriteFileOptions = { mode: 0o600, append: false, createParents: true };
  await vm.writeFile('/f', new Uint8Array([1, 2]), w);
  const r: ReadFileOptions = { maxBytes: 10 };
  await vm.readFile('/f', r);
  const snap: Image = await vm.snapshot('/tmp/snap2');
  void snap;
  const expose: ExposeTcpOptions = { guestPort: 80, hostPort: 0, host: '127.0.0.1' };
  const fwd: TcpForwarder = await vm.exposeTcp(expose);
  const where: string = `${fwd.host}:${fwd.port}->${fwd.guestPort}`;
  void where;
  await fwd.close();
  const id: string = vm.id;
  const released: boolean = vm.released;
  void id, released;
  await vm.release();
  await vm[Symbol.asyncDispose]();
  await pool[Symbol.asyncDispose]();
  await pool.shutdown();

  try {
    await vm.exec(['true']);
  } catch (e) {
    const err = e as SupermachineError;
    const c: ErrorCode = err.code;
    if (c === ErrorCodes.VM_RELEASED || c === ErrorCodes.ETIMEDOUT) {
      const t = err as ExecTimeoutError;
      void t.result, t.stdout, t.serialLog, t.path;
    }
  }
  void cjs.Image.build;
}
