/** Drives test/support/remote-peer.mjs: a WebSocket peer in a process of its own. */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('./remote-peer.mjs', import.meta.url));
const live = new Set<RemotePeer>();

// biome-ignore lint/suspicious/noExplicitAny: the child's answers are free-form JSON
type Answer = any;

export class RemotePeer {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly waiting: ((a: Answer) => void)[] = [];
  private buf = '';

  constructor() {
    this.child = spawn(process.execPath, [SCRIPT]);
    live.add(this);
    this.child.stdout.on('data', (d: Buffer) => {
      this.buf += d.toString();
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        this.waiting.shift()?.(JSON.parse(line));
      }
    });
  }

  private ask(cmd: object): Promise<Answer> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.child.stdin.write(`${JSON.stringify(cmd)}\n`);
    });
  }

  async open(url: string): Promise<void> {
    const a = await this.ask({ open: url });
    if (!a.opened) throw new Error(`remote peer could not open ${url}: ${a.error}`);
  }

  send(frames: (string | Buffer)[]): Promise<{ sent: number }> {
    return this.ask({ send: frames.map((f) => (typeof f === 'string' ? f : { b64: f.toString('base64') })) });
  }

  stats(): Promise<{ received: number; last: string; closed: number | null }> {
    return this.ask({ stats: true });
  }

  closeSocket(): Promise<void> {
    return this.ask({ close: true });
  }

  kill(): void {
    this.child.kill('SIGKILL');
    live.delete(this);
  }

  /** Polls `stats` until `pred` holds, up to `timeoutMs`. */
  async until(
    pred: (s: { received: number; last: string; closed: number | null }) => boolean,
    label: string,
    timeoutMs = 10_000,
  ): Promise<{ received: number; last: string; closed: number | null }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.stats();
      if (pred(s)) return s;
      if (Date.now() > deadline)
        throw new Error(`remote peer: timed out waiting for ${label} (${JSON.stringify(s).slice(0, 300)})`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

export function killRemotePeers(): void {
  for (const p of live) p.kill();
}
