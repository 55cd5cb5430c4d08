/**
 * The browser example (examples/browser) in headless Chromium from Debian, driven by playwright-core,
 * against the demo agent served in-process with `staticDir` (what `asap serve --static` does): the
 * page connects, an echo round trip, streamed chunks and pushed updates as they arrive, the bearer
 * token through the `asap.bearer.<token>` subprotocol, and reconnection after a server restart.
 *
 * Chromium: /usr/bin/chromium, or ASAP_CHROMIUM_PATH. Never a downloaded browser. When it is missing
 * the suite fails under CI (CI=true) with a message saying so, and is skipped with a warning otherwise.
 *
 * After the streamed task the page is saved to test-artifacts/browser-example.png (git-ignored).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { staticOptions } from '../../src/cli/commands.js';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import type { Authenticator } from '../../src/server/auth.js';
import { jwtAuthenticator } from '../../src/server/jwt.js';
import type { ASAPServer } from '../../src/server/server.js';
import { ensureBundle, ROOT } from './ensure-bundle.js';

const EXAMPLE_DIR = join(ROOT, 'examples', 'browser');
const ARTIFACTS = join(ROOT, 'test-artifacts');

const CHROMIUM = process.env.ASAP_CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];
const CI = process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
const MISSING_MESSAGE =
  `Chromium not found at ${CHROMIUM}. The browser tests need Debian's Chromium: ` +
  'apt-get install -y chromium (.ci/run does it), or point ASAP_CHROMIUM_PATH at a Chromium binary.';

if (!HAVE_CHROMIUM && !CI) {
  process.stderr.write(
    `\n[test/browser] SKIPPED: ${MISSING_MESSAGE} (set CI=true to make this a failure)\n\n`,
  );
}

const WAIT = { timeout: 8000 };

describe.skipIf(!HAVE_CHROMIUM && !CI)('browser example in headless Chromium', () => {
  let browser: Browser | undefined;
  let context: BrowserContext | undefined;
  const servers: ASAPServer[] = [];
  let pageErrors: string[] = [];

  beforeAll(async () => {
    if (!HAVE_CHROMIUM) throw new Error(MISSING_MESSAGE);
    ensureBundle();
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  }, 60_000);

  afterEach(async () => {
    await context?.close();
    context = undefined;
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  afterAll(async () => {
    await browser?.close();
  });

  async function startAgent(
    opts: { port?: number; token?: string; authenticate?: Authenticator } = {},
  ): Promise<string> {
    const server = createDemoAgent({
      ...staticOptions(EXAMPLE_DIR),
      rateLimit: 0,
      token: opts.token,
      authenticate: opts.authenticate,
      drainTimeoutMs: 1000,
    });
    servers.push(server);
    const addr = await server.listen({ host: '127.0.0.1', port: opts.port ?? 0 });
    return addr.url;
  }

  async function openPage(url: string): Promise<Page> {
    context = await browser!.newContext({ viewport: { width: 1000, height: 900 } });
    const page = await context.newPage();
    pageErrors = [];
    page.on('pageerror', (err) => pageErrors.push(err.message));
    await page.goto(url);
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    return page;
  }

  function waitForState(page: Page, state: string): Promise<unknown> {
    return page.waitForFunction(
      (s) => document.querySelector('[data-testid="state"]')?.getAttribute('data-state') === s,
      state,
      WAIT,
    );
  }

  async function stateHistory(page: Page): Promise<string[]> {
    const text = (await page.textContent('[data-testid="state-history"]')) ?? '';
    return text.split(' → ').filter((s) => s !== '');
  }

  /** Records, for each log entry added from now on, its text and whether the response was still empty. */
  async function watchLog(page: Page): Promise<void> {
    await page.evaluate(() => {
      const w = window as unknown as { seen: { kind: string; text: string; responded: boolean }[] };
      w.seen = [];
      const log = document.querySelector('[data-testid="log"]')!;
      const response = document.querySelector('[data-testid="response"]')!;
      new MutationObserver((records) => {
        for (const r of records) {
          for (const node of Array.from(r.addedNodes)) {
            const li = node as HTMLElement;
            w.seen.push({
              kind: li.dataset.kind ?? '',
              text: li.textContent ?? '',
              responded: (response.textContent ?? '') !== '',
            });
          }
        }
      }).observe(log, { childList: true });
    });
  }

  async function seen(page: Page): Promise<{ kind: string; text: string; responded: boolean }[]> {
    return page.evaluate(
      () => (window as unknown as { seen: { kind: string; text: string; responded: boolean }[] }).seen,
    );
  }

  async function sendTask(page: Page, skill: string, input: object): Promise<void> {
    await page.selectOption('[data-testid="skill"]', skill);
    await page.fill('[data-testid="input"]', JSON.stringify(input));
    await page.click('[data-testid="send"]');
  }

  async function response(page: Page, status = 'completed'): Promise<{ payload: Record<string, unknown> }> {
    await page.waitForSelector(`[data-testid="response"][data-status="${status}"]`, WAIT);
    return JSON.parse((await page.textContent('[data-testid="response"]')) ?? '');
  }

  it('loads the bundle and connects, showing connecting then open', async () => {
    const base = await startAgent();
    const page = await openPage(base);
    await waitForState(page, 'open');
    const history = await stateHistory(page);
    expect(history.indexOf('connecting')).toBeGreaterThanOrEqual(0);
    expect(history.indexOf('connecting')).toBeLessThan(history.indexOf('open'));
    // The default URL is the page's own host.
    expect(await page.inputValue('[data-testid="url"]')).toBe(`${base.replace('http:', 'ws:')}/asap/ws`);
    expect(pageErrors).toEqual([]);
  });

  it('does an echo round trip', async () => {
    const page = await openPage(await startAgent());
    await waitForState(page, 'open');
    await sendTask(page, 'echo', { hello: 'browser', n: 42 });
    const res = await response(page);
    expect(res.payload).toMatchObject({ status: 'completed', result: { echo: { hello: 'browser', n: 42 } } });
    expect(await page.isHidden('[data-testid="error"]')).toBe(true);
    expect(pageErrors).toEqual([]);
  });

  it('shows streamed chunks in order as they arrive, then the final response; saves a screenshot', async () => {
    const page = await openPage(await startAgent());
    await waitForState(page, 'open');
    await watchLog(page);
    await sendTask(page, 'stream', { chunks: 5, interval_ms: 80 });
    const res = await response(page);
    expect(res.payload).toMatchObject({ chunk: 'chunk-4', final: true, status: 'completed' });
    const entries = await seen(page);
    expect(entries.map((e) => e.kind)).toEqual(['chunk', 'chunk', 'chunk', 'chunk', 'chunk']);
    expect(entries.map((e) => e.text.match(/chunk-\d/)?.[0])).toEqual([
      'chunk-0',
      'chunk-1',
      'chunk-2',
      'chunk-3',
      'chunk-4',
    ]);
    expect(entries[0]!.text).toContain('20%');
    expect(entries[4]!.text).toContain('final');
    // Every chunk was on screen before the response was: they are shown as they arrive.
    expect(entries.every((e) => !e.responded)).toBe(true);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'browser-example.png'), fullPage: true });
    expect(pageErrors).toEqual([]);
  });

  it('shows pushed updates as they arrive, before the response', async () => {
    const page = await openPage(await startAgent());
    await waitForState(page, 'open');
    await watchLog(page);
    await sendTask(page, 'push', { count: 3 });
    const res = await response(page);
    expect(res.payload).toMatchObject({ status: 'completed', result: { pushed: 3 } });
    const entries = await seen(page);
    expect(entries.map((e) => e.kind)).toEqual(['push', 'push', 'push']);
    expect(entries.map((e) => e.text.match(/\d+%/)?.[0])).toEqual(['33%', '67%', '100%']);
    expect(entries[0]!.text).toContain('TaskUpdate');
    expect(entries.every((e) => !e.responded)).toBe(true);
  });

  it('authenticates with the asap.bearer.<token> subprotocol; a wrong or missing token is refused', async () => {
    const base = await startAgent({ token: 'open-sesame' });
    // No token (autoconnect on load): refused with 4401.
    const page = await openPage(base);
    await waitForState(page, 'closed');
    expect(await page.textContent('[data-testid="error"]')).toContain('Authentication required');
    expect(await page.getAttribute('[data-testid="error"]', 'data-code')).toBe('-32004');

    // The right token: open, and a request goes through.
    await page.fill('[data-testid="token"]', 'open-sesame');
    await page.click('[data-testid="connect"]');
    await waitForState(page, 'open');
    expect(await page.isHidden('[data-testid="error"]')).toBe(true);
    expect(
      await page.evaluate(
        () =>
          (window as never as { asapExample: { transport: { protocol: string } } }).asapExample.transport
            .protocol,
      ),
    ).toBe('asap.v1');
    await sendTask(page, 'echo', { secret: true });
    expect((await response(page)).payload).toMatchObject({ result: { echo: { secret: true } } });

    // A wrong token: closed, unauthorized, and no reconnect loop.
    await page.fill('[data-testid="token"]', 'wrong');
    await page.click('[data-testid="connect"]');
    await waitForState(page, 'closed');
    expect(await page.textContent('[data-testid="error"]')).toContain('Invalid token');
    expect(await page.getAttribute('[data-testid="error"]', 'data-code')).toBe('-32004');
    await page.waitForTimeout(600);
    expect(await page.getAttribute('[data-testid="state"]', 'data-state')).toBe('closed');
    expect((await stateHistory(page)).at(-1)).toBe('closed');
  });

  it('authenticates with an OIDC JWT in the asap.bearer.<token> subprotocol', async () => {
    const { publicKey, privateKey } = await generateKeyPair('ES256');
    const authenticate = jwtAuthenticator({
      keys: { keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256' }] },
      issuer: 'https://id.example.test',
      audience: 'asap-demo',
    });
    const base = await startAgent({ authenticate });
    const jwt = await new SignJWT({ scope: 'asap:execute' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer('https://id.example.test/')
      .setAudience('asap-demo')
      .setSubject('urn:asap:agent:browser-example')
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(privateKey);
    const page = await openPage(base);
    await waitForState(page, 'closed');
    await page.fill('[data-testid="token"]', jwt);
    await page.click('[data-testid="connect"]');
    await waitForState(page, 'open');
    await sendTask(page, 'echo', { via: 'jwt' });
    expect((await response(page)).payload).toMatchObject({ result: { echo: { via: 'jwt' } } });
  });

  it('reconnects after the server restarts on the same port, and the next request succeeds', async () => {
    const base = await startAgent();
    const port = Number(new URL(base).port);
    const page = await openPage(base);
    await waitForState(page, 'open');

    await servers.shift()!.close();
    await waitForState(page, 'reconnecting');
    await page.waitForTimeout(300); // a failed attempt or two while nothing listens
    expect(await page.getAttribute('[data-testid="state"]', 'data-state')).toBe('reconnecting');

    await startAgent({ port });
    await waitForState(page, 'open');
    const history = await stateHistory(page);
    const firstOpen = history.indexOf('open');
    const reconnecting = history.indexOf('reconnecting', firstOpen);
    expect(firstOpen).toBeGreaterThanOrEqual(0);
    expect(reconnecting).toBeGreaterThan(firstOpen);
    expect(history.at(-1)).toBe('open');
    expect(history).not.toContain('closed');

    await sendTask(page, 'echo', { after: 'restart' });
    expect((await response(page)).payload).toMatchObject({ result: { echo: { after: 'restart' } } });
    expect(pageErrors).toEqual([]);
  });
});
