/**
 * What the server refuses on the viewer socket (src/protocol/relay.ts, duplicated to keep zod
 * out of the bundle; test/web/limits.test.ts checks they agree): checked before sending, since
 * a frame over the limit closes the socket (1009) and an invalid message closes it too (4102).
 */
export const MAX_VIEWER_FRAME = 64 * 1024;
/** Terminal input per data frame: a paste goes in several, well under MAX_VIEWER_FRAME with its header. */
export const TERM_INPUT_PIECE = 60 * 1024;
export const MAX_ARGS = 256;
export const MAX_ARG = 4096;
export const MAX_PATH = 4096;

/** `text` as UTF-8 in pieces of at most `max` bytes, never splitting a character. */
export function utf8Pieces(text: string, max = TERM_INPUT_PIECE): Uint8Array[] {
  const bytes = new TextEncoder().encode(text);
  const out: Uint8Array[] = [];
  for (let start = 0; start < bytes.byteLength; ) {
    let end = Math.min(bytes.byteLength, start + max);
    // Back off to the start of a character: continuation bytes are 10xxxxxx.
    if (end < bytes.byteLength) while (end > start && (bytes[end]! & 0xc0) === 0x80) end--;
    out.push(bytes.subarray(start, end));
    start = end;
  }
  return out;
}

/** Why the server would refuse this argv, or null. */
export function argvProblem(argv: string[]): string | null {
  if (argv.length > MAX_ARGS) return `too many arguments (${argv.length}; at most ${MAX_ARGS})`;
  const long = argv.findIndex((a) => a.length > MAX_ARG);
  if (long >= 0) return `argument ${long + 1} is too long (${argv[long]!.length} characters; at most ${MAX_ARG})`;
  return null;
}

/** Why the server would refuse this path, or null. */
export function pathProblem(path: string): string | null {
  if (path.length === 0) return "the path is empty";
  if (path.length > MAX_PATH) return `the path is too long (${path.length} characters; at most ${MAX_PATH})`;
  return null;
}
