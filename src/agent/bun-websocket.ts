/**
 * Bun's WebSocket, typed with the options it takes (headers above all). The DOM's type, which
 * the project also loads, declares only subprotocols as the second argument.
 */
export const BunWebSocket = WebSocket as unknown as new (url: string | URL, options?: Bun.WebSocketOptions) => WebSocket;
