/**
 * Bytes queued on a Bun server socket and not yet written: how far a receiver is behind. Bun
 * has it; Elysia's copy of the socket type does not declare it.
 */
export const bufferedAmount = (raw: unknown): number => (raw as { getBufferedAmount(): number }).getBufferedAmount();
