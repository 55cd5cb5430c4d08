import { isIPv6 } from 'node:net';
import { ASAP_VERSION } from '../protocol/envelope.js';
import type { Capability, Manifest, Skill } from '../protocol/manifest.js';

/** What a server author says about the agent; endpoints and skills are filled in by the server. */
export interface ManifestInit {
  id: string;
  name?: string;
  version?: string;
  description?: string;
  capabilities?: Omit<Capability, 'skills'>;
  auth?: Manifest['auth'];
  ttl_seconds?: number;
}

export function buildManifest(
  init: ManifestInit,
  skills: Skill[],
  endpoints: { asap: string; events?: string | undefined },
  authRequired: boolean,
): Manifest {
  const manifest: Manifest = {
    id: init.id,
    name: init.name ?? init.id.slice('urn:asap:agent:'.length),
    version: init.version ?? '0.1.0',
    description: init.description ?? 'ASAP agent',
    capabilities: {
      asap_version: ASAP_VERSION,
      skills,
      state_persistence: false,
      // Streams are served over HTTP too (SSE at `<asap>/stream`, asap-wire.md §11), WebSocket or not.
      // The reference's Endpoint schema has no field for that URL (only `asap` and `events`, no
      // additional properties), so it is not advertised: it is always `endpoints.asap` + `/stream`.
      streaming: true,
      mcp_tools: [],
      ...init.capabilities,
    },
    endpoints:
      endpoints.events === undefined
        ? { asap: endpoints.asap }
        : { asap: endpoints.asap, events: endpoints.events },
    supported_versions: [ASAP_VERSION],
    ttl_seconds: init.ttl_seconds ?? 300,
  };
  const auth = init.auth ?? (authRequired ? { schemes: ['bearer'] } : undefined);
  if (auth) manifest.auth = auth;
  return manifest;
}

/** Where the manifest's endpoints point: `scheme://host` and a path prefix (none, or `/a/b`). */
export interface EndpointBase {
  scheme: 'http' | 'https';
  /** Host name or address, with the port when it is not the scheme's default. */
  host: string;
  prefix?: string;
}

/**
 * The base of a `publicUrl`: an absolute `http://` or `https://` URL without credentials, query or
 * fragment; its path (trailing slashes dropped) prefixes every endpoint. Throws a TypeError otherwise.
 */
export function parsePublicUrl(url: string): Required<EndpointBase> {
  let u: URL | undefined;
  try {
    u = new URL(url);
  } catch {
    u = undefined;
  }
  if (
    u === undefined ||
    (u.protocol !== 'http:' && u.protocol !== 'https:') ||
    u.username !== '' ||
    u.password !== '' ||
    /[?#]/.test(url)
  )
    throw new TypeError(
      `publicUrl must be an http:// or https:// URL without credentials, query or fragment (got ${JSON.stringify(url)})`,
    );
  return {
    scheme: u.protocol === 'https:' ? 'https' : 'http',
    host: u.host,
    prefix: u.pathname.replace(/\/+$/, ''),
  };
}

const HOST_PORT = /^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(\d{1,5}))?$/i;
const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i;

/**
 * A `Host` / `X-Forwarded-Host` value when it is one host (DNS name, IPv4 address or bracketed
 * IPv6 address) with an optional port 1–65535, lowercased; undefined for anything else (paths,
 * credentials, spaces, several values), so that garbage never reaches a URL.
 */
export function validHost(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const m = HOST_PORT.exec(value);
  if (m === null) return undefined;
  const name = m[1]!;
  const port = m[2];
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65_535)) return undefined;
  if (name.startsWith('[') ? !isIPv6(name.slice(1, -1)) : !isDnsNameOrIPv4(name)) return undefined;
  return value.toLowerCase();
}

/** A DNS name (an IPv4 address is one as far as its syntax goes): labels of 1–63 letters, digits and inner hyphens. */
function isDnsNameOrIPv4(name: string): boolean {
  return name.length <= 253 && name.split('.').every((label) => LABEL.test(label));
}

/** The first entry of a comma-separated forwarded header (`X-Forwarded-Host: a, b` → `a`), trimmed. */
export function firstForwarded(header: string | string[] | undefined): string | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined) return undefined;
  const first = value.split(',', 1)[0]!.trim();
  return first === '' ? undefined : first;
}

/** `X-Forwarded-Proto`'s first entry when it is `http` or `https` (any case); undefined otherwise. */
export function forwardedProto(header: string | string[] | undefined): 'http' | 'https' | undefined {
  const first = firstForwarded(header)?.toLowerCase();
  return first === 'http' || first === 'https' ? first : undefined;
}

/**
 * `host:port` of a socket address: IPv6 in brackets, an IPv4-mapped one (`::ffff:10.0.0.1`, what a
 * dual-stack listener sees of an IPv4 client) as IPv4; undefined without an address (a Unix socket).
 */
export function hostPort(address: string | undefined, port: number | undefined): string | undefined {
  if (address === undefined || port === undefined) return undefined;
  const a = address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
  return a.includes(':') ? `[${a}]:${port}` : `${a}:${port}`;
}
