import * as OTPAuth from "otpauth";
import type { Queryable } from "../store/store.ts";
import { randomHex, sha256Hex } from "./secrets.ts";

/**
 * TOTP second factor (RFC 6238, SHA-1, 6 digits, 30 s: what authenticator apps expect), with
 * one-time recovery codes. A code is accepted within one step of drift, and each time step
 * once: the last accepted step is stored, so a replayed code fails.
 */
const ISSUER = "Tether";
const PERIOD = 30;

const totpFor = (username: string, secret: string) =>
  new OTPAuth.TOTP({ issuer: ISSUER, label: username, secret: OTPAuth.Secret.fromBase32(secret), period: PERIOD, digits: 6, algorithm: "SHA1" });

/** Starts (or restarts) enrollment: a new secret, live only once confirmed. */
export async function beginTotp(db: Queryable, userId: string, username: string): Promise<{ secret: string; otpauth_uri: string }> {
  const secret = new OTPAuth.Secret({ size: 20 }).base32;
  await db.query("update users set totp_secret = $2, totp_confirmed_at = null, totp_last_step = null where id = $1", [userId, secret]);
  return { secret, otpauth_uri: totpFor(username, secret).toString() };
}

/** Checks a code against the user's secret and burns its time step. */
export async function checkTotp(db: Queryable, userId: string, username: string, secret: string, code: string, lastStep: number | null, now = Date.now()): Promise<boolean> {
  const delta = totpFor(username, secret).validate({ token: code, timestamp: now, window: 1 });
  if (delta === null) return false;
  const step = Math.floor(now / 1000 / PERIOD) + delta;
  if (lastStep !== null && step <= lastStep) return false;
  // Conditional, so two requests racing with one code cannot both win.
  const rows = await db.query("update users set totp_last_step = $2 where id = $1 and (totp_last_step is null or totp_last_step < $2) returning id", [userId, step]);
  return rows.length === 1;
}

/** Confirms enrollment with a first code; returns fresh recovery codes (shown once). */
export async function confirmTotp(db: Queryable, tenantId: string, userId: string, username: string, code: string): Promise<string[] | null> {
  const [u] = await db.query<{ totp_secret: string | null; totp_last_step: number | null; totp_confirmed_at: unknown }>(
    "select totp_secret, totp_last_step, totp_confirmed_at from users where id = $1", [userId]);
  // Only a pending secret is confirmed: a second factor already in force has no pending one, and
  // a code from it must not re-issue (and so silently invalidate) the user's recovery codes.
  if (!u?.totp_secret || u.totp_confirmed_at !== null || !(await checkTotp(db, userId, username, u.totp_secret, code, u.totp_last_step))) return null;
  const codes = Array.from({ length: 10 }, () => formatRecovery(randomHex(5)));
  const confirmed = await db.query("update users set totp_confirmed_at = now() where id = $1 and totp_confirmed_at is null and totp_secret = $2 returning id", [userId, u.totp_secret]);
  if (confirmed.length !== 1) return null; // confirmed (or restarted) meanwhile by another request
  await db.query("delete from recovery_codes where user_id = $1", [userId]);
  for (const c of codes) await db.query("insert into recovery_codes (tenant_id, user_id, code_hash) values ($1, $2, $3)", [tenantId, userId, sha256Hex(normalizeRecovery(c))]);
  return codes;
}

export async function disableTotp(db: Queryable, userId: string): Promise<void> {
  await db.query("update users set totp_secret = null, totp_confirmed_at = null, totp_last_step = null where id = $1", [userId]);
  await db.query("delete from recovery_codes where user_id = $1", [userId]);
}

/** Spends a recovery code; true if it was unused. */
export async function useRecoveryCode(db: Queryable, userId: string, code: string): Promise<boolean> {
  const rows = await db.query(
    "update recovery_codes set used_at = now() where user_id = $1 and code_hash = $2 and used_at is null returning user_id",
    [userId, sha256Hex(normalizeRecovery(code))]);
  return rows.length === 1;
}

const formatRecovery = (hex: string) => `${hex.slice(0, 5)}-${hex.slice(5, 10)}`;
const normalizeRecovery = (code: string) => code.trim().toLowerCase().replace(/[^0-9a-f]/g, "");
