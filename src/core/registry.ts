import type { Envelope } from '../protocol/envelope.js';
import type { Manifest, Skill } from '../protocol/manifest.js';
import {
  normalizePayloadType,
  type PayloadMap,
  type PayloadTypeName,
  type TaskStream,
} from '../protocol/payloads.js';
import type { JsonObject } from '../protocol/schema-util.js';
import type { Logger } from './logger.js';

/** Where a handler was reached from. */
export type TransportKind = 'http' | 'websocket';

/** What a handler may return: a reply envelope, the reply's payload, nothing, or a stream of TaskStream chunks. */
export type HandlerResult =
  | Envelope<object>
  | JsonObject
  | undefined
  // biome-ignore lint/suspicious/noConfusingVoidType: handlers that return nothing are typed `void`
  | void
  | AsyncIterable<TaskStream | Envelope<TaskStream>>;

/** An envelope to push; sender, recipient and the rest are filled from the connection when omitted. */
export interface PushInit<P extends object = JsonObject> {
  payload_type: string;
  payload: P;
  recipient?: string;
  sender?: string;
  correlation_id?: string | null;
  trace_id?: string | null;
  requires_ack?: boolean;
}

export interface HandlerContext<P extends object = JsonObject> {
  readonly envelope: Envelope<P>;
  /** The task this request concerns: a TaskRequest's own envelope id, else `payload.task_id` when present. */
  readonly taskId: string;
  readonly transport: TransportKind;
  /** What the authentication check returned for this caller, if anything. */
  readonly principal: unknown;
  readonly logger: Logger;
  readonly manifest: Manifest | undefined;
  /** Aborted by a TaskCancel for this task, by the deadline, or by shutdown. */
  readonly signal: AbortSignal;
  /**
   * Sends an envelope to the caller's connection (a no-op over HTTP). Resolves once written, or
   * once acknowledged when it requires an ack; rejects once the task is over (deadline, cancel).
   */
  push(envelope: Envelope<object> | PushInit<object>): Promise<void>;
  /**
   * Pushes to every connection of another agent URN (on a server); resolves with how many
   * connections it reached, rejects when none took it.
   */
  pushTo(agentUrn: string, envelope: Envelope<object> | PushInit<object>): Promise<number>;
  /** Builds the reply envelope to this request with the given type and payload. */
  reply<Q extends object>(payloadType: string, payload: Q): Envelope<Q>;
}

export type Handler<P extends object = JsonObject> = (
  envelope: Envelope<P>,
  ctx: HandlerContext<P>,
) => HandlerResult | Promise<HandlerResult>;

export interface SkillInfo {
  description?: string;
  input_schema?: JsonObject;
  output_schema?: JsonObject;
}

/**
 * Handlers keyed by normalised `payload_type`, and TaskRequest skills keyed by
 * `skill_id`. The server and the client (for reverse requests) share it.
 */
export class HandlerRegistry {
  private readonly handlers = new Map<string, Handler<object>>();
  private readonly skillHandlers = new Map<
    string,
    { handler: Handler<PayloadMap['TaskRequest']>; info: Skill }
  >();

  /** Registers the handler for one payload type (any spelling). Replaces an earlier one. */
  on<T extends PayloadTypeName>(payloadType: T, handler: Handler<PayloadMap[T]>): this;
  on(payloadType: string, handler: Handler): this;
  on(payloadType: string, handler: Handler<never>): this {
    this.handlers.set(normalizePayloadType(payloadType), handler as Handler<object>);
    return this;
  }

  off(payloadType: string): this {
    this.handlers.delete(normalizePayloadType(payloadType));
    return this;
  }

  /** Registers a TaskRequest skill; its info is listed in the manifest. */
  skill(id: string, handler: Handler<PayloadMap['TaskRequest']>, info: SkillInfo = {}): this {
    const skill: Skill = { id, description: info.description ?? id };
    if (info.input_schema) skill.input_schema = info.input_schema;
    if (info.output_schema) skill.output_schema = info.output_schema;
    this.skillHandlers.set(id, { handler, info: skill });
    return this;
  }

  /** The handler for a normalised payload type. */
  get(normalisedType: string): Handler<object> | undefined {
    return this.handlers.get(normalisedType);
  }

  getSkill(id: string): Handler<PayloadMap['TaskRequest']> | undefined {
    return this.skillHandlers.get(id)?.handler;
  }

  get hasSkills(): boolean {
    return this.skillHandlers.size > 0;
  }

  /** Skills as the manifest lists them. */
  skills(): Skill[] {
    return [...this.skillHandlers.values()].map((s) => s.info);
  }
}
