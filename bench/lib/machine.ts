/** One paragraph describing the machine and the tools, printed above the tables. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { firstLineOf } from './procs';

export interface MachineInfo {
  cpu: string;
  cores: number;
  ramGiB: number;
  kernel: string;
  qemu: string;
  fio: string;
  node: string;
  benchFs: string;
}

export function cpuModel(cpuinfo: string): string {
  const m = /^model name\s*:\s*(.+)$/m.exec(cpuinfo);
  return m?.[1]?.trim() ?? 'unknown CPU';
}

export function machineInfo(benchDir: string): MachineInfo {
  let cpuinfo = '';
  try {
    cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    /* not Linux */
  }
  const df = firstLineOf('sh', ['-c', `df -T "${benchDir}" | tail -1 | awk '{print $2 " (" $1 ")"}'`]);
  return {
    cpu: cpuModel(cpuinfo),
    cores: os.cpus().length,
    ramGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    qemu: (firstLineOf('qemu-img', ['--version']) ?? 'qemu-img missing').replace(/^qemu-img version /, ''),
    fio: firstLineOf('fio', ['--version']) ?? 'fio missing',
    node: process.version,
    benchFs: df ?? 'unknown',
  };
}

export function describeMachine(m: MachineInfo): string {
  return [
    `- CPU: ${m.cpu}, ${m.cores} cores; RAM ${m.ramGiB} GiB`,
    `- Kernel: ${m.kernel}`,
    `- QEMU: ${m.qemu}; ${m.fio}; Node ${m.node}`,
    `- Benchmark folder on: ${m.benchFs}`,
  ].join('\n');
}
