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
