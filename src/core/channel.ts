/**
 * What a {@link Peer} writes to: one bidirectional stream of text frames. The
 * server's per-connection object and the client's reconnecting WebSocket both
 * are one. The owner feeds what arrives to `peer.receive(text)` and tells the
 * peer when the channel drops (`peer.disconnected`) or ends (`peer.close`).
 */
export interface Channel {
  /**
   * Writes one frame now, or holds it while the channel is (re)connecting.
   * `flush`, given with a held frame, runs when the frame is about to be
   * written after the channel opens; returning false drops the frame (its
   * request was settled while it waited).
   */
  send(text: string, flush?: () => boolean): SendResult;
  /** Most frames held while (re)connecting (0: nothing is held). */
  readonly maxHeld: number;
  /** True while frames are written at once. */
  readonly isOpen: boolean;
  /** A promise while the send buffer is over its high-water mark, resolved once under it. */
  drained(): Promise<void> | undefined;
}

/** `full`: the hold queue is at its bound; `closed`: the channel takes nothing any more. */
export type SendResult = 'written' | 'queued' | 'full' | 'closed';
