import type { Logger } from "../log.ts";
import type { ConsentPolicy, Presenter } from "./host.ts";

/**
 * Managed mode: a service has nobody to ask, so `--unattended-consent allow|deny` answers for
 * sessions that require consent (site policy). Deny by default.
 */
export function fixedConsent(granted: boolean, log: Logger): ConsentPolicy {
  return async (req) => {
    log.info({ event: "session.consent_policy", session: req.session, granted }, `consent required; --unattended-consent answers ${granted ? "allow" : "deny"}`);
    return granted;
  };
}

/**
 * Managed mode has no person to show things to: notices go to the log at info, chat as a
 * count only (its text never goes in a log).
 */
export function logPresenter(log: Logger): Presenter {
  return {
    started: (req) => log.info({ event: "session.active", session: req.session, kind: req.kind, technician: req.technician }, "session active"),
    notice: (session, text) => log.info({ event: "session.notice", session, text }, "notice"),
    chat: (session, from, text) => log.info({ event: "session.chat", session, from, chars: text.length }, "chat message (nobody at this machine to read it)"),
    ended: (session, reason) => log.info({ event: "session.ended", session, reason }, "session ended"),
  };
}
