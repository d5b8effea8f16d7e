/** Reads child-process output streams line by line, calling `onLine` for each complete line. */
export function readLines(streams: ReadableStream<Uint8Array>[], onLine: (line: string) => void): void {
  for (const stream of streams) {
    void (async () => {
      const decoder = new TextDecoder();
      let buf = "";
      for await (const chunk of stream) {
        buf += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          onLine(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      }
    })();
  }
}
