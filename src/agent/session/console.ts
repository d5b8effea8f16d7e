import { createInterface, type Interface } from "node:readline";
import type { ConsentPolicy, ConsentRequest, Presenter } from "./host.ts";

/**
 * The person's terminal in attended mode: plain text on stdout (a person reads it, not a log
 * parser), and lines from stdin, which answer the consent question when one is open and are
 * sent as chat otherwise. Text from the server is stripped of control characters before it is
 * printed, so a technician's name or message cannot drive the person's terminal.
 */
export class PersonConsole {
  private rl: Interface | null = null;
  private question: ((line: string | null) => void) | null = null;
  private inputClosed = false;
  onChatLine: ((line: string) => void) | null = null;

  constructor(
    private readonly out: { write(s: string): unknown },
    private readonly input: NodeJS.ReadableStream | null,
  ) {}

  print(line: string): void {
    this.out.write(line + "\n");
  }

  /** Starts reading lines (consent answers, chat). Without it, a question is answered "no". */
  listen(): void {
    if (this.rl || !this.input || this.inputClosed) return;
    this.rl = createInterface({ input: this.input, terminal: false });
    this.rl.on("line", (line) => {
      const q = this.question;
      if (q) {
        this.question = null;
        q(line);
      } else if (line.trim()) this.onChatLine?.(line);
    });
    this.rl.on("close", () => {
      this.inputClosed = true;
      const q = this.question;
      this.question = null;
      q?.(null);
    });
  }

  /** Asks a yes/no question; only y/yes is yes. No input, or an abort, is no. */
  ask(prompt: string, signal: AbortSignal): Promise<boolean> {
    this.listen();
    if (!this.rl || this.inputClosed) {
      this.print(`${prompt} (no input to answer from: declined)`);
      return Promise.resolve(false);
    }
    this.out.write(prompt + " ");
    return new Promise((resolve) => {
      const onAbort = () => {
        if (this.question !== answer) return;
        this.question = null;
        this.print("\n(the request was withdrawn)");
        resolve(false);
      };
      const answer = (line: string | null) => {
        signal.removeEventListener("abort", onAbort);
        if (line === null) this.print("\n(no answer: declined)");
        resolve(line !== null && /^\s*y(es)?\s*$/i.test(line));
      };
      this.question = answer;
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  close(): void {
    this.rl?.close();
    this.rl = null;
    (this.input as { pause?: () => void } | null)?.pause?.();
  }
}

/**
 * Escape sequences (CSI, OSC) and control characters (C0 but newline and tab, DEL, C1) out:
 * nothing from the server reaches the person's terminal as a command to it.
 */
export function printable(text: string, oneLine = false): string {
  const s = text
    .replace(/\u001b\[[0-?]*[ -/]*[@-~]/g, "")
    .replace(/\u001b\][^\u0007\u001b]*(\u0007|\u001b\\)?/g, "")
    .replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, "");
  return oneLine ? s.replace(/[\n\t]+/g, " ") : s;
}

const ENDED: Record<string, string> = {
  technician: "the technician ended it",
  end_user: "you ended it",
  timeout: "it timed out",
  removal: "the machine was removed",
  superseded: "another connection took over",
  consent_denied: "you declined",
  agent_lost: "the connection was lost",
};

/** Attended mode's consent: ask the person, or answer as --consent says (printed either way). */
export function attendedConsent(mode: "ask" | "allow" | "deny", console: PersonConsole): ConsentPolicy {
  return async (req: ConsentRequest, signal: AbortSignal) => {
    const who = printable(req.technician, true);
    if (mode !== "ask") {
      console.print(`Technician ${who} asks to connect to this computer. Allow? [y/N] ${mode === "allow" ? "y" : "N"} (--consent ${mode})`);
      return mode === "allow";
    }
    const granted = await console.ask(`Technician ${who} asks to connect to this computer. Allow? [y/N]`, signal);
    if (!signal.aborted) console.print(granted ? "Allowed." : "Declined.");
    return granted;
  };
}

/** Attended mode tells the person who is there, what they say, and when it is over (S7). */
export function consolePresenter(console: PersonConsole, chat: boolean): Presenter {
  return {
    started: (req) => {
      console.print(`Technician ${printable(req.technician, true)} is now connected to this computer.`);
      console.print(chat ? "Type a message and press Enter to chat. Press Ctrl-C to end the session." : "Press Ctrl-C to end the session.");
    },
    notice: (_session, text) => console.print(`* ${printable(text)}`),
    chat: (_session, from, text) => console.print(`${printable(from, true)}: ${printable(text)}`),
    ended: (_session, reason) => console.print(`The session has ended (${ENDED[reason] ?? printable(reason, true)}).`),
  };
}
