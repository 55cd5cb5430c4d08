import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import type { ASAPClient } from '../client/client.js';
import type { TokenSource } from '../client/runtime.js';
import { ASAPError, ConnectionError, LocalErrorCode } from '../protocol/errors.js';
import type { JsonObject } from '../protocol/schema-util.js';
import type { JwtAuthenticator } from '../server/jwt.js';
import { normalizeOrigin } from '../server/origin.js';
import { LOG_LEVELS, type LogLevel } from './log-levels.js';

// Only what parsing the command line needs is imported above: the client, the server, the logger
// and their dependencies are loaded by the command that runs (`asap --help` loads none of them).

/** The check of `isJsonObject` (protocol/schema-util), here so parsing `--input` does not load zod. */
function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The version of this package: the `version` of the nearest package.json above this module (the
 * package root from `dist/cli/` after a build and from `src/cli/` under tsx).
 */
export function packageVersion(): string {
  let dir = new URL('./', import.meta.url);
  for (let i = 0; i < 5; i++) {
    const file = fileURLToPath(new URL('package.json', dir));
    if (existsSync(file)) {
      try {
        const pkg = JSON.parse(readFileSync(file, 'utf8')) as { version?: unknown };
        if (typeof pkg.version === 'string') return pkg.version;
      } catch {
        // Unreadable: look further up.
      }
    }
    dir = new URL('../', dir);
  }
  return '0.0.0';
}

/**
 * A one-line error for a URL given without its scheme (`127.0.0.1:8080`, `localhost:8080/asap/ws`),
 * suggesting the `http://` and `ws://` spellings; undefined when the URL has a scheme.
 */
export function missingSchemeError(url: string, base = false): string | undefined {
  // host, host:port or [v6]:port, then an optional path: no scheme (else the URL's own error speaks).
  if (!/^([\w.-]+|\[[\da-f:.]+\])(:\d+)?(\/\S*)?$/i.test(url)) return undefined;
  const hostPort = url.split('/')[0] ?? url;
  return base
    ? `${url} has no scheme: use http://${hostPort}`
    : `${url} has no scheme: use http://${hostPort}/asap (HTTP) or ws://${hostPort}/asap/ws (WebSocket)`;
}

/** `: <result.error>` of a failed task, naming the skills that exist when it says so; else ''. */
function failureDetail(result: unknown): string {
  if (!isJsonObject(result) || typeof result.error !== 'string') return '';
  const skills = result.available_skills;
  const names = Array.isArray(skills) ? skills.filter((s): s is string => typeof s === 'string') : [];
  return `: ${result.error}${names.length > 0 ? ` (available skills: ${names.join(', ')})` : ''}`;
}

/** The one-line message of a request that got no answer within `--timeout` seconds. */
function timeoutMessage(seconds: number): string {
  return `no response within ${seconds} s (--timeout)`;
}

/** A repeatable option's values, in order. */
function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function int(name: string, min = 0) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}

function positive(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a number > 0`);
    return n;
  };
}

/** Collects repeated `--allow-origin` values; each must be `*` or a bare origin (`scheme://host[:port]`). */
function originArg(value: string, previous: string[]): string[] {
  if (value !== '*' && normalizeOrigin(value.replace(/\/$/, '')) === undefined)
    throw new InvalidArgumentError('--allow-origin must be * or an origin like https://app.example');
  return [...previous, value];
}

/** `--public-url`: an http(s) URL without credentials, query or fragment (as ASAPServer's publicUrl). */
function publicUrlArg(value: string): string {
  if (!/^https?:\/\/[^/?#@\s]+(\/[^?#\s]*)?$/i.test(value) || !URL.canParse(value))
    throw new InvalidArgumentError(
      '--public-url must be an http:// or https:// URL without credentials, query or fragment',
    );
  return value;
}

function jsonObjectArg(value: string): JsonObject {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new InvalidArgumentError('--input must be JSON');
  }
  if (!isJsonObject(parsed)) throw new InvalidArgumentError('--input must be a JSON object');
  return parsed;
}

interface ServeOptions {
  host: string;
  port: number;
  agentId: string;
  token?: string;
  rateLimit: number;
  heartbeatInterval: number;
  maxMessageBytes: number;
  drainTimeout: number;
  logLevel: LogLevel;
  pushForm: 'notification' | 'result';
  static?: string;
  allowOrigin: string[];
  maxConnections: number;
  redis?: string;
  tokenAgent: string[];
  jwksUrl?: string;
  issuer?: string;
  audience: string[];
  requiredScope: string[];
  clockTolerance: number;
  agentClaim?: string;
  tokenUrl?: string;
  metrics: boolean;
  publicUrl?: string;
  trustProxy?: boolean;
  requestLog: boolean;
}

/** The browser bundle (scripts/build-browser.mjs) from dist/cli/ after a build, or from src/cli/ under tsx. */
export function browserBundleFile(): string {
  const candidates = ['../browser/asap-client.js', '../../dist/browser/asap-client.js'].map((p) =>
    fileURLToPath(new URL(p, import.meta.url)),
  );
  return candidates.find((p) => existsSync(p)) ?? candidates[0]!;
}

/** Server options for `--static DIR`: the directory, plus the browser bundle at `/asap-client.js`. */
export function staticOptions(dir: string): { staticDir: string; staticFiles: Record<string, string> } {
  return { staticDir: dir, staticFiles: { '/asap-client.js': browserBundleFile() } };
}

async function serve(o: ServeOptions): Promise<number> {
  const [{ createLogger }, { createDemoAgent }] = await Promise.all([
    import('./logger.js'),
    import('./demo-agent.js'),
  ]);
  const logger = createLogger(o.logLevel);
  // Redis only when asked: its client is loaded then, not by every `asap` command.
  let store: Awaited<ReturnType<typeof import('../redis/store.js')['redisStore']>> | undefined;
  if (o.redis !== undefined) {
    const { redisStore } = await import('../redis/store.js');
    try {
      store = await redisStore(o.redis, { logger });
    } catch (err) {
      process.stderr.write(`asap serve: cannot use Redis at ${o.redis}: ${(err as Error).message}\n`);
      return 1;
    }
  }
  let jwt: JwtAuthenticator | undefined;
  if (o.jwksUrl !== undefined) {
    if (o.issuer === undefined || o.audience.length === 0) {
      process.stderr.write('asap serve: --jwks-url needs --issuer and --audience\n');
      return 1;
    }
    const { jwtAuthenticator } = await import('../server/jwt.js');
    jwt = jwtAuthenticator({
      jwksUrl: o.jwksUrl,
      issuer: o.issuer,
      audience: o.audience,
      requiredScopes: o.requiredScope.length > 0 ? o.requiredScope : undefined,
      clockToleranceSec: o.clockTolerance,
      agentClaim: o.agentClaim,
      logger,
    });
  }
  const server = createDemoAgent({
    store,
    tokenAgents: o.tokenAgent.length > 0 ? o.tokenAgent : undefined,
    authenticate: jwt,
    auth: jwt?.manifestAuth({ tokenUrl: o.tokenUrl }),
    agentId: o.agentId,
    logger,
    token: o.token,
    rateLimit: o.rateLimit,
    heartbeatIntervalMs: o.heartbeatInterval * 1000,
    maxMessageBytes: o.maxMessageBytes,
    drainTimeoutMs: o.drainTimeout * 1000,
    pushForm: o.pushForm,
    allowOrigins: o.allowOrigin,
    maxConnections: o.maxConnections,
    metrics: o.metrics,
    publicUrl: o.publicUrl,
    trustProxy: o.trustProxy,
    requestLog: o.requestLog,
    ...(o.static === undefined ? {} : staticOptions(o.static)),
  });
  const addr = await server.listen({ host: o.host, port: o.port });
  const hostPart = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
  const base = `${hostPart}:${addr.port}`;
  process.stdout.write(`ASAP agent listening on http://${base} (ws://${base}/asap/ws)\n`);
  if (o.logLevel !== 'silent') {
    const token = o.token === undefined ? '' : ' --token <token>';
    process.stderr.write(
      `Try it from another terminal:\n  npx asap send ws://${base}/asap/ws --skill echo --input '{"hello":"world"}'${token}\n`,
    );
    if (o.static !== undefined) {
      const bundle = browserBundleFile();
      process.stderr.write(`Serving ${o.static} at http://${base}/ (the client bundle at /asap-client.js)\n`);
      if (!existsSync(bundle)) process.stderr.write(`  ${bundle} is missing: run npm run build\n`);
    }
  }
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      logger.info({ signal }, 'shutting down');
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      void server
        .close()
        .then(() => store?.close())
        .then(resolve);
    };
    const onTerm = () => stop('SIGTERM');
    const onInt = () => stop('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
  });
  return 0;
}

interface SendOptions {
  skill: string;
  input: JsonObject;
  token?: string;
  tokenCommand?: string;
  timeout: number;
  stream?: boolean;
  sender: string;
  recipient: string;
}

/**
 * `--token`, or `--token-command CMD`: a command (run by the shell) whose standard output is the
 * token, run again for every new connection, as kubectl and gcloud credential helpers are.
 */
function tokenSource(o: { token?: string; tokenCommand?: string }): TokenSource | undefined {
  const command = o.tokenCommand;
  if (command === undefined) return o.token;
  return () =>
    new Promise<string>((resolve, reject) => {
      execFile(
        '/bin/sh',
        ['-c', command],
        { timeout: 30_000, maxBuffer: 64 * 1024 },
        (err, stdout, stderr) => {
          const token = String(stdout).trim();
          if (err !== null)
            reject(new Error(`--token-command failed: ${String(stderr).trim() || err.message}`));
          else if (token === '' || /\s/.test(token))
            reject(new Error('--token-command printed no single token'));
          else resolve(token);
        },
      );
    });
}

/** Local failures where no answer came (demo-agent.md: exit 2); any other error is an answer (exit 1). */
const NO_ANSWER: ReadonlySet<number> = new Set<number>([
  LocalErrorCode.ConnectionFailed,
  LocalErrorCode.RequestTimeout,
  LocalErrorCode.RequestAborted,
]);

function failureExit(err: unknown, command = 'send', timeoutSeconds?: number): number {
  const e = err instanceof ASAPError ? err : new ConnectionError((err as Error).message);
  const noAnswer = e.local && NO_ANSWER.has(e.code);
  if (!noAnswer) {
    const shown = e.toJSON();
    process.stdout.write(`${JSON.stringify({ error: shown }, null, 2)}\n`);
  }
  // The deadline in the unit of the flag that set it, without the internal request id.
  const message =
    e.local && e.code === LocalErrorCode.RequestTimeout && timeoutSeconds !== undefined
      ? timeoutMessage(timeoutSeconds)
      : e.message;
  process.stderr.write(`asap ${command}: ${noAnswer ? '' : `error ${e.code}: `}${message}\n`);
  return noAnswer ? 2 : 1;
}

async function send(url: string, o: SendOptions): Promise<number> {
  const noScheme = missingSchemeError(url);
  if (noScheme !== undefined) {
    process.stderr.write(`asap send: ${noScheme}\n`);
    return 2;
  }
  const { ASAPClient } = await import('../client/client.js');
  let client: ASAPClient;
  try {
    client = new ASAPClient(url, {
      token: tokenSource(o),
      sender: o.sender,
      recipient: o.recipient,
      requestTimeoutMs: o.timeout * 1000,
      websocket: { reconnect: false, heartbeatIntervalMs: 0, circuitBreaker: false },
    });
  } catch (err) {
    process.stderr.write(`asap send: ${(err as Error).message}\n`);
    return 2;
  }
  // Pushes that arrive while waiting: one NDJSON line each, `{"push": envelope}`, before the reply.
  const stopPushes = client.onMessage((pushed) => {
    process.stdout.write(`${JSON.stringify({ push: pushed })}\n`);
  });
  try {
    const envelope = client.taskEnvelope(o.skill, o.input, o.stream ? { config: { streaming: true } } : {});
    let last: { payload: object } | undefined;
    if (o.stream) {
      for await (const chunk of client.stream(envelope)) {
        process.stdout.write(`${JSON.stringify(chunk)}\n`);
        last = chunk;
      }
      stopPushes();
    } else {
      last = await client.send(envelope);
      stopPushes();
      process.stdout.write(`${JSON.stringify(last, null, 2)}\n`);
    }
    const payload = last?.payload as { status?: unknown; result?: unknown } | undefined;
    const status = payload?.status;
    if (status === 'completed') return 0;
    process.stderr.write(
      `asap send: task ended with status ${String(status)}${failureDetail(payload?.result)}\n`,
    );
    return 1;
  } catch (err) {
    stopPushes();
    return failureExit(err, 'send', o.timeout);
  } finally {
    await client.close();
  }
}

async function discover(
  baseUrl: string,
  o: { token?: string; tokenCommand?: string; timeout: number },
): Promise<number> {
  const noScheme = missingSchemeError(baseUrl, true);
  if (noScheme !== undefined) {
    process.stderr.write(`asap discover: ${noScheme}\n`);
    return 2;
  }
  const { ASAPClient } = await import('../client/client.js');
  let client: ASAPClient;
  try {
    client = new ASAPClient(baseUrl.replace(/^ws(s?):/, 'http$1:'), {
      token: tokenSource(o),
      requestTimeoutMs: o.timeout * 1000,
    });
  } catch (err) {
    process.stderr.write(`asap discover: ${(err as Error).message}\n`);
    return 2;
  }
  try {
    const [manifest, health] = await Promise.all([client.discover(), client.health()]);
    process.stdout.write(`${JSON.stringify({ manifest, health }, null, 2)}\n`);
    return 0;
  } catch (err) {
    return failureExit(err, 'discover', o.timeout);
  }
}

/** Parses argv and runs the command; resolves with the exit code. */
export async function run(argv: string[]): Promise<number | undefined> {
  let code: number | undefined;
  const version = packageVersion();
  const program = new Command('asap')
    .description('ASAP agent-to-agent protocol: run the demo agent, send tasks, discover agents')
    .version(version, '-V, --version', 'print the version and exit')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('serve')
    .version(version, '--version', 'print the version and exit')
    .description('start the demo agent (HTTP and WebSocket on one port)')
    .option('--host <host>', 'listen address', '127.0.0.1')
    .option('--port <port>', 'listen port; 0 picks a free one', int('--port'), 8080)
    .option('--agent-id <urn>', 'the manifest id and the sender of replies', 'urn:asap:agent:demo')
    .option('--token <token>', 'require Authorization: Bearer <token> on HTTP and WebSocket')
    .option(
      '--rate-limit <n>',
      'WebSocket messages per second per connection; 0 turns it off',
      int('--rate-limit'),
      10,
    )
    .option(
      '--heartbeat-interval <s>',
      'seconds between server pings; stale after 3x this',
      positive('--heartbeat-interval'),
      30,
    )
    .option(
      '--max-message-bytes <n>',
      'frame / body size limit',
      int('--max-message-bytes', 1),
      10 * 1024 * 1024,
    )
    .option(
      '--drain-timeout <s>',
      'seconds in-flight work may finish on shutdown',
      positive('--drain-timeout'),
      10,
    )
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
    .addOption(
      new Option(
        '--push-form <form>',
        'server push as notifications, or as result frames with id null (reference clients)',
      )
        .choices(['notification', 'result'])
        .default('notification'),
    )
    .option(
      '--static <dir>',
      'also serve the files of this directory (and the browser bundle at /asap-client.js)',
    )
    .option(
      '--allow-origin <origin>',
      'a browser origin allowed besides our own (repeatable); * allows any',
      originArg,
      [] as string[],
    )
    .option(
      '--max-connections <n>',
      'open WebSocket connections; past it new ones close with 1013',
      int('--max-connections', 1),
      10_000,
    )
    .option(
      '--token-agent <urn>',
      'with --token: an agent URN its holders may speak for (repeatable; default any)',
      collect,
      [] as string[],
    )
    .option('--jwks-url <url>', 'accept OAuth2/OIDC bearer JWTs signed by the keys at this JWKS URL')
    .option('--issuer <url>', 'with --jwks-url: the expected iss (a trailing slash is ignored)')
    .option('--audience <aud>', 'with --jwks-url: an accepted aud (repeatable)', collect, [] as string[])
    .option(
      '--required-scope <scope>',
      'with --jwks-url: a scope every request needs (repeatable)',
      collect,
      [] as string[],
    )
    .option(
      '--clock-tolerance <s>',
      'with --jwks-url: seconds of clock skew allowed on exp/nbf',
      int('--clock-tolerance'),
      5,
    )
    .option(
      '--agent-claim <claim>',
      'with --jwks-url: the claim naming the agent URNs a caller may speak for (default asap_agents; a URN sub always counts)',
    )
    .option('--token-url <url>', 'the token endpoint the manifest advertises for OAuth2 clients')
    .option(
      '--redis <url>',
      'keep dedupe outcomes, nonces, sessions, push routing and counters in Redis (several processes act as one agent)',
    )
    .option('--no-metrics', 'do not serve Prometheus metrics at GET /asap/metrics')
    .option(
      '--public-url <url>',
      'the base URL the manifest advertises behind a proxy (https:// gives wss://)',
      publicUrlArg,
    )
    .option('--trust-proxy', "take the manifest's scheme and host from X-Forwarded-Proto / X-Forwarded-Host")
    .option('--no-request-log', 'no info log line per finished request')
    .action(async (o: ServeOptions) => {
      code = await serve(o);
    });

  program
    .command('send')
    .version(version, '--version', 'print the version and exit')
    .description('send one TaskRequest and print the response envelope')
    .argument('<url>', 'ws://HOST:PORT/asap/ws or http://HOST:PORT/asap')
    .option('--skill <id>', 'skill to run', 'echo')
    .option('--input <json>', 'the task input, a JSON object', jsonObjectArg, {})
    .option('--token <token>', 'bearer token')
    .option('--token-command <cmd>', 'a command whose output is the bearer token (run for every connection)')
    .option('--timeout <s>', 'seconds to wait for the response', positive('--timeout'), 30)
    .option('--stream', 'print each chunk as it arrives')
    .option('--sender <urn>', 'sender agent URN', 'urn:asap:agent:cli')
    .option('--recipient <urn>', 'recipient agent URN', 'urn:asap:agent:demo')
    .action(async (url: string, o: SendOptions) => {
      code = await send(url, o);
    });

  program
    .command('discover')
    .version(version, '--version', 'print the version and exit')
    .description("print an agent's manifest and health")
    .argument('<base-url>', 'http://HOST:PORT')
    .option('--token <token>', 'bearer token')
    .option('--token-command <cmd>', 'a command whose output is the bearer token (run for every connection)')
    .option('--timeout <s>', 'seconds to wait', positive('--timeout'), 10)
    .action(async (baseUrl: string, o: { token?: string; timeout: number }) => {
      code = await discover(baseUrl, o);
    });

  try {
    await program.parseAsync(argv);
  } catch (err) {
    // Not a parse error: an action failed (e.g. serve could not listen). Say why instead of exiting silently.
    if (!(err instanceof CommanderError)) {
      process.stderr.write(`asap: ${(err as Error).message}\n`);
      return 2;
    }
    const e = err as { exitCode?: number; code?: string };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
    if (e.code === 'commander.help') return 0;
    return e.exitCode === 0 ? 0 : 2;
  }
  return code;
}
