import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { extname, resolve, sep } from 'node:path';

/** Content types by file extension; anything else is served as `application/octet-stream`. */
export const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};

export interface StaticFilesOptions {
  /** The directory whose files are served; `/` and directories serve their `index.html`. */
  root: string;
  /** Extra URL paths mapped to single files outside the root, e.g. `{ '/asap-client.js': 'dist/browser/asap-client.js' }`. */
  files?: Record<string, string>;
  /**
   * Runs once a file is found, before it is sent: false means it answered the
   * request itself (the server's Origin check, asap-wire.md §10, refuses foreign
   * origins with 403). Checked only for files that exist, so that requests this
   * server does not serve still reach whoever does.
   */
  admit: (req: IncomingMessage, res: ServerResponse) => boolean;
}

function inside(root: string, path: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}

/**
 * Serves the files of one directory for GET and HEAD, never anything outside
 * it: the path is resolved and checked, then checked again once symbolic links
 * are followed.
 */
export class StaticFiles {
  private readonly root: string;
  private readonly files: Map<string, string>;
  private readonly admit: (req: IncomingMessage, res: ServerResponse) => boolean;
  private realRoot: Promise<string> | undefined;

  constructor(opts: StaticFilesOptions) {
    this.root = resolve(opts.root);
    this.files = new Map(Object.entries(opts.files ?? {}).map(([url, file]) => [url, resolve(file)]));
    this.admit = opts.admit;
  }

  /**
   * Takes GET and HEAD requests and answers them with a file, or calls
   * `notFound` when there is none. False (other methods) leaves the request to the caller.
   */
  handle(req: IncomingMessage, res: ServerResponse, notFound: () => void): boolean {
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    void this.serve(req, res).then((served) => {
      if (!served) notFound();
    });
    return true;
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const file = await this.locate((req.url ?? '/').split('?', 1)[0]!);
    if (file === undefined) return false;
    if (!this.admit(req, res)) return true;
    const type = CONTENT_TYPES[extname(file.path).toLowerCase()] ?? 'application/octet-stream';
    res.writeHead(200, {
      'content-type': type,
      'content-length': file.size,
      'cache-control': 'no-cache',
      'x-content-type-options': 'nosniff',
    });
    if (req.method === 'HEAD') {
      res.end();
      return true;
    }
    const stream = createReadStream(file.path);
    stream.on('error', () => res.destroy());
    stream.pipe(res);
    return true;
  }

  /** The file a URL path names, or undefined when it names none inside the root. */
  private async locate(urlPath: string): Promise<{ path: string; size: number } | undefined> {
    let path: string;
    try {
      path = decodeURIComponent(urlPath);
    } catch {
      return undefined;
    }
    if (path.includes('\0')) return undefined;
    const mapped = this.files.get(path);
    if (mapped !== undefined) return this.file(mapped);
    let target = resolve(this.root, `.${path}`);
    if (!inside(this.root, target)) return undefined;
    try {
      if ((await stat(target)).isDirectory()) target = resolve(target, 'index.html');
      const real = await realpath(target);
      this.realRoot ??= realpath(this.root);
      if (!inside(await this.realRoot, real)) return undefined;
      return await this.file(real);
    } catch {
      return undefined;
    }
  }

  private async file(path: string): Promise<{ path: string; size: number } | undefined> {
    try {
      const s = await stat(path);
      return s.isFile() ? { path, size: s.size } : undefined;
    } catch {
      return undefined;
    }
  }
}
