-- Tether schema. Applied at every start by src/store/schema.ts: each `-- version: N` section
-- runs once, in order, in its own transaction, and is recorded in schema_migrations with a
-- checksum. Append new sections; never edit an applied one (start-up refuses if you do).
-- The same SQL runs on embedded PGlite and on PostgreSQL.

-- version: 1
-- The actor runtime: journal, snapshots, timers and the registry of actors' life states.

-- Every event an actor accepted, in order. Never rewritten: recovery and replay read it.
create table actor_journal (
  kind      text    not null,
  actor_id  text    not null,
  seq       bigint  not null,            -- per-actor, gapless, from 1
  version   integer not null,            -- the logic version that accepted the event
  at        bigint  not null,            -- epoch ms, the time the event carried in
  event     jsonb   not null,
  primary key (kind, actor_id, seq)
);

-- Persisted XState snapshots; `seq` is the last journal entry folded into `state`.
create table actor_snapshots (
  kind      text    not null,
  actor_id  text    not null,
  seq       bigint  not null,
  version   integer not null,
  at        bigint  not null,
  state     jsonb   not null,
  primary key (kind, actor_id, seq)
);

-- Delayed events with absolute deadlines, written with the event that set them.
create table actor_timers (
  kind      text    not null,
  actor_id  text    not null,
  key       text    not null,
  due_at    bigint  not null,
  event     jsonb   not null,
  primary key (kind, actor_id, key)
);
create index actor_timers_due on actor_timers (due_at);

-- Life state: 'active' (resident with un-snapshotted events: recovered at start),
-- 'passive' (snapshotted and out of memory), 'failed' (stopped by its supervisor).
create table actors (
  kind        text   not null,
  actor_id    text   not null,
  status      text   not null check (status in ('active', 'passive', 'failed')),
  failure     text,
  updated_at  bigint not null,
  primary key (kind, actor_id)
);
create index actors_not_passive on actors (status) where status <> 'passive';

-- version: 2
-- Accounts, credentials, sites, enrollment, machines, grants and the audit log.
-- Every table holding tenant data has tenant_id; every query filters on it.

create table tenants (
  id          uuid primary key,
  name        text not null,
  created_at  timestamptz not null default now()
);
insert into tenants (id, name) values ('00000000-0000-0000-0000-000000000001', 'default');

-- Per-tenant security policy.
create table tenant_settings (
  tenant_id          uuid primary key references tenants(id),
  require_totp_roles text[] not null default '{}',
  updated_at         timestamptz not null default now()
);
insert into tenant_settings (tenant_id) values ('00000000-0000-0000-0000-000000000001');

create table users (
  id                 uuid primary key,
  tenant_id          uuid not null references tenants(id),
  username           text not null,
  display_name       text not null,
  role               text not null check (role in ('admin', 'technician', 'auditor', 'end_user')),
  password_hash      text not null,                -- Argon2id PHC string
  totp_secret        text,                         -- base32; set at enrollment, live once confirmed
  totp_confirmed_at  timestamptz,
  totp_last_step     bigint,                       -- last accepted time step: a code works once
  disabled_at        timestamptz,
  created_at         timestamptz not null default now(),
  updated_at         timestamptz not null default now()
);
-- Usernames are global: login names no tenant.
create unique index users_username on users (lower(username));
create index users_tenant on users (tenant_id);

create table recovery_codes (
  tenant_id  uuid not null references tenants(id),
  user_id    uuid not null references users(id) on delete cascade,
  code_hash  text not null,                        -- SHA-256 hex
  used_at    timestamptz,
  primary key (user_id, code_hash)
);

-- Login sessions: opaque random tokens, stored as SHA-256.
create table auth_sessions (
  id            uuid primary key,
  tenant_id     uuid not null references tenants(id),
  user_id       uuid not null references users(id) on delete cascade,
  token_hash    text not null unique,
  restricted    boolean not null default false,    -- may only enroll a second factor
  ip            text,
  user_agent    text,
  created_at    timestamptz not null default now(),
  expires_at    timestamptz not null,
  last_seen_at  timestamptz not null default now(),
  revoked_at    timestamptz
);
create index auth_sessions_user on auth_sessions (user_id) where revoked_at is null;

-- Personal API tokens (tpat_), stored as SHA-256.
create table api_tokens (
  id            uuid primary key,
  tenant_id     uuid not null references tenants(id),
  user_id       uuid not null references users(id) on delete cascade,
  name          text not null,
  token_hash    text not null unique,
  prefix        text not null,                     -- first characters, for display
  scopes        text[] not null,
  created_at    timestamptz not null default now(),
  expires_at    timestamptz not null,
  last_used_at  timestamptz,
  revoked_at    timestamptz
);
create index api_tokens_user on api_tokens (user_id);

create table sites (
  id            uuid primary key,
  tenant_id     uuid not null references tenants(id),
  site_code     text not null,
  display_name  text not null,
  company       text not null default '',
  created_at    timestamptz not null default now()
);
create unique index sites_tenant_code on sites (tenant_id, site_code);
create index sites_code on sites (site_code);

create table site_enrollment_keys (
  id           uuid primary key,
  tenant_id    uuid not null references tenants(id),
  site_id      uuid not null references sites(id) on delete cascade,
  key_hash     text not null,                      -- Argon2id PHC string of the cek_
  version      integer not null,
  fingerprint  text not null,                      -- first 4 hex of SHA-256, upper case
  active       boolean not null default true,
  created_at   timestamptz not null default now(),
  rotated_at   timestamptz,
  unique (site_id, version)
);
-- One active key per site, enforced by the database.
create unique index site_enrollment_keys_one_active on site_enrollment_keys (site_id) where active;

create table machines (
  id                uuid primary key,
  tenant_id         uuid not null references tenants(id),
  site_id           uuid references sites(id) on delete set null,
  machine_uid       text not null,
  hostname          text not null,
  labels            jsonb not null default '{}',   -- company, site, department, device_type, tags
  public_key        text not null,                 -- base64 Ed25519, the agent's identity key
  enrollment_state  text not null default 'active' check (enrollment_state in ('active', 'pending')),
  status            text not null default 'offline' check (status in ('online', 'offline')),
  last_seen_at      timestamptz,
  created_at        timestamptz not null default now(),
  updated_at        timestamptz not null default now(),
  deleted_at        timestamptz                    -- soft delete; re-enrollment revives
);
-- A full (not partial) unique index: ON CONFLICT (tenant_id, machine_uid) binds to it as is.
create unique index machines_tenant_uid on machines (tenant_id, machine_uid);

-- A clone-looking enrollment waiting for an admin: the claimant's details, no key issued.
create table enrollment_requests (
  id           uuid primary key,
  tenant_id    uuid not null references tenants(id),
  machine_id   uuid not null references machines(id) on delete cascade,
  site_id      uuid not null references sites(id) on delete cascade,
  hostname     text not null,
  labels       jsonb not null default '{}',
  public_key   text not null,
  ip           text,
  status       text not null default 'pending' check (status in ('pending', 'approved', 'rejected')),
  created_at   timestamptz not null default now(),
  decided_at   timestamptz,
  decided_by   uuid references users(id)
);
create unique index enrollment_requests_one_pending on enrollment_requests (machine_id) where status = 'pending';

-- Per-machine agent keys (cak_), stored as SHA-256.
create table agent_keys (
  id            uuid primary key,
  tenant_id     uuid not null references tenants(id),
  machine_id    uuid not null references machines(id) on delete cascade,
  key_hash      text not null unique,
  prefix        text not null,
  created_at    timestamptz not null default now(),
  created_by    uuid references users(id),
  last_used_at  timestamptz,
  revoked_at    timestamptz
);
create index agent_keys_machine on agent_keys (machine_id);

-- Machines an end_user may reach. No rows: no machines.
create table user_machine_grants (
  tenant_id   uuid not null references tenants(id),
  user_id     uuid not null references users(id) on delete cascade,
  machine_id  uuid not null references machines(id) on delete cascade,
  created_at  timestamptz not null default now(),
  created_by  uuid references users(id),
  primary key (user_id, machine_id)
);

-- Security events. Never secrets, key material, passwords or chat text.
create table audit_events (
  id              text primary key,                -- ULID: sortable, the pagination cursor
  tenant_id       uuid not null references tenants(id),
  at              timestamptz not null default now(),
  type            text not null,
  outcome         text not null default 'success' check (outcome in ('success', 'failure')),
  actor_type      text not null,                   -- user, api_token, agent, anonymous, system
  actor_id        text,
  actor_name      text,
  target_type     text,
  target_id       text,
  ip              text,
  correlation_id  text,
  details         jsonb not null default '{}'
);
create index audit_events_tenant_id on audit_events (tenant_id, id desc);
create index audit_events_type on audit_events (tenant_id, type, id desc);
create index audit_events_target on audit_events (tenant_id, target_id, id desc);
create index audit_events_actor on audit_events (tenant_id, actor_id, id desc);

-- version: 3
-- Presence and inventory, projected from each machine actor (the actor is the source of truth;
-- these columns serve listing and search).
alter table machines add column inventory jsonb not null default '{}';
alter table machines add column external_ip text;
alter table machines add column agent_version text;

-- version: 4
-- Machine search (M5): one lower-cased search document per machine, generated from its
-- attributes and inventory, with a trigram index so a substring term (LIKE '%term%') is an
-- index scan. Site code and name live in sites and are matched there (sites are few).
-- pg_trgm lives in schema public so every search_path (tests use one schema each) shares it.
create extension if not exists pg_trgm with schema public;

-- The string elements of a jsonb array, one per line ('' for anything else).
create function tether_json_strings(j jsonb) returns text language sql immutable parallel safe as $$ select coalesce(string_agg(t.v, chr(10)), '') from jsonb_array_elements_text(case when jsonb_typeof(j) = 'array' then j else '[]'::jsonb end) as t(v) $$;

alter table machines add column search_doc text generated always as (lower(
  hostname || chr(10) || machine_uid || chr(10) ||
  coalesce(labels->>'company', '') || chr(10) || coalesce(labels->>'site', '') || chr(10) ||
  coalesce(labels->>'department', '') || chr(10) || coalesce(labels->>'device_type', '') || chr(10) ||
  tether_json_strings(labels->'tags') || chr(10) ||
  coalesce(inventory->'os'->>'name', '') || ' ' || coalesce(inventory->'os'->>'version', '') || chr(10) ||
  coalesce(inventory->>'kernel', '') || chr(10) || coalesce(inventory->'cpu'->>'model', '') || chr(10) ||
  coalesce(inventory->>'hostname', '') || chr(10) || coalesce(inventory->>'timezone', '') || chr(10) ||
  coalesce(inventory->>'agent_version', '') || chr(10) || coalesce(agent_version, '') || chr(10) ||
  tether_json_strings(inventory->'users') || chr(10) || tether_json_strings(inventory->'private_ips') || chr(10) ||
  tether_json_strings(inventory->'macs') || chr(10) || coalesce(external_ip, '') || chr(10) ||
  status || case when enrollment_state = 'pending' then chr(10) || 'pending' else '' end
)) stored;
create index machines_search_doc on machines using gin (search_doc public.gin_trgm_ops);

-- Listing and sorting: keyset pages per tenant, and site matches OR-ed into a bitmap scan.
create index machines_tenant_hostname on machines (tenant_id, lower(hostname), id) where deleted_at is null;
create index machines_tenant_created on machines (tenant_id, created_at, id) where deleted_at is null;
create index machines_site on machines (site_id);

-- version: 5
-- Sessions and the relay (S1–S8). The session actor (session/<id>) is the source of truth;
-- `sessions` is its projection for lists and the viewer-socket checks, `session_events` the
-- readable history (also in the audit log).
alter table sites add column require_consent boolean not null default false;

create table sessions (
  id              uuid primary key,
  tenant_id       uuid not null references tenants(id),
  kind            text not null check (kind in ('attended', 'unattended', 'end_user')),
  machine_id      uuid references machines(id) on delete set null,
  created_by      uuid references users(id) on delete set null,
  technician      text not null,
  state           text not null,
  end_reason      text,
  consent         text not null default 'not_required',
  attended_host   text,
  attended_user   text,
  viewers         integer not null default 0,
  created_at      timestamptz not null default now(),
  started_at      timestamptz,
  ended_at        timestamptz,
  updated_at      timestamptz not null default now()
);
create index sessions_tenant_created on sessions (tenant_id, created_at desc, id);
create index sessions_machine_live on sessions (machine_id) where ended_at is null;

create table session_events (
  id          bigint generated always as identity primary key,
  tenant_id   uuid not null references tenants(id),
  session_id  uuid not null references sessions(id) on delete cascade,
  type        text not null,
  actor       text,
  details     jsonb not null default '{}',
  at          timestamptz not null default now()
);
create index session_events_session on session_events (session_id, id);

-- Support codes (S2): numeric, single use, expiring; only the SHA-256 of a code is stored.
create table support_codes (
  id          uuid primary key,
  tenant_id   uuid not null references tenants(id),
  code_hash   text not null,
  created_by  uuid not null references users(id) on delete cascade,
  technician  text not null,
  session_id  uuid references sessions(id) on delete set null,
  status      text not null default 'open' check (status in ('open', 'used', 'cancelled')),
  expires_at  timestamptz not null,
  created_at  timestamptz not null default now(),
  used_at     timestamptz
);
-- One open code per hash at a time: a new code never collides with a live one.
create unique index support_codes_open on support_codes (code_hash) where status = 'open';

-- Viewer tokens (S3) are signed and short-lived; revoking one before it expires records it here.
create table viewer_token_revocations (
  jti         text primary key,
  session_id  uuid not null,
  expires_at  timestamptz not null,
  revoked_at  timestamptz not null default now()
);

-- Recordings (S6): every terminal channel, as asciicast v2 events in chunks. A chunk is
-- written when it fills or every second, so a crash loses at most the last second of output.
create table recordings (
  id          uuid primary key,
  tenant_id   uuid not null references tenants(id),
  session_id  uuid not null references sessions(id) on delete cascade,
  machine_id  uuid,
  channel     bigint not null,
  cols        integer not null,
  rows        integer not null,
  started_at  timestamptz not null,
  ended_at    timestamptz,
  bytes       bigint not null default 0,
  chunks      integer not null default 0
);
create index recordings_session on recordings (session_id, started_at);
create index recordings_machine on recordings (machine_id, started_at desc);
create index recordings_started on recordings (started_at);

create table recording_chunks (
  recording_id uuid not null references recordings(id) on delete cascade,
  seq          integer not null,
  -- asciicast v2 event lines ([t, "o", data] / [t, "r", "COLSxROWS"]), newline-separated.
  events       text not null,
  primary key (recording_id, seq)
);

-- Keys the server generates for itself on first start (e.g. the viewer-token signing key), so
-- every process of a deployment (primary and standby) signs and verifies alike.
create table server_secrets (
  name        text primary key,
  value       text not null,
  created_at  timestamptz not null default now()
);

-- version: 6
-- Rooms (R1–R5). The room actor (room/<id>) is the source of truth for a room's name, policy,
-- members and key epoch; `rooms` and `room_members` are its projection. Messages are not actor
-- events: they are written here in id order by src/rooms/message-log.ts and only then fanned out.
-- A session's room has the session's id.
create table rooms (
  id          uuid primary key,
  tenant_id   uuid not null references tenants(id),
  name        text not null,
  kind        text not null check (kind in ('team', 'session')),
  persist     boolean not null,
  sign        boolean not null,
  encrypt     boolean not null,
  epoch       integer not null default 1,   -- the key epoch messages are sealed with (encrypt)
  keyed_epoch integer not null default 0,   -- the newest epoch whose sealed keys are stored
  created_by  uuid references users(id) on delete set null,
  created_at  timestamptz not null default now()
);
create index rooms_tenant on rooms (tenant_id, created_at desc);

-- `member` is a user id, or `person:<session id>` for the person at an attended machine.
create table room_members (
  room_id   uuid not null references rooms(id) on delete cascade,
  member    text not null,
  user_id   uuid references users(id) on delete cascade,
  name      text not null,
  role      text not null check (role in ('owner', 'member')),
  added_at  timestamptz not null default now(),
  primary key (room_id, member)
);
create index room_members_user on room_members (user_id);

create table room_messages (
  room_id     uuid not null references rooms(id) on delete cascade,
  id          text not null,                 -- ULID: sortable, unique in the room
  sender      text not null,
  sender_name text not null,
  client_id   text,
  body        text not null,                 -- ciphertext (base64url) in an encrypted room
  epoch       integer,                       -- encrypted rooms: the key epoch of the body
  ts          bigint not null,               -- ms since the epoch; signed over in signed rooms
  signature   text,
  sign_key    text,                          -- the sender's public key the signature verified with
  primary key (room_id, id)
);
create unique index room_messages_client on room_messages (room_id, sender, client_id) where client_id is not null;

-- A room key sealed to one member's X25519 key, per epoch. The server cannot open it.
create table room_keys (
  room_id  uuid not null references rooms(id) on delete cascade,
  epoch    integer not null,
  member   text not null,
  sealed   text not null,
  primary key (room_id, epoch, member)
);

-- Users' public keys: Ed25519 to sign room messages, X25519 to receive sealed room keys.
create table user_keys (
  user_id     uuid not null references users(id) on delete cascade,
  kind        text not null check (kind in ('ed25519', 'x25519')),
  public_key  text not null,
  created_at  timestamptz not null default now(),
  primary key (user_id, kind)
);

-- version: 7
-- The primary's lease (P9). With PostgreSQL, a process serves only while it holds this row: it
-- renews `expires_at` (the database's clock, never a host's), and every journal commit checks it
-- in the same transaction (fencing), so a primary that lost it cannot write after a standby took
-- over. `epoch` grows with every new holder.
create table leases (
  name         text primary key,
  holder       text not null,
  epoch        bigint not null,
  expires_at   timestamptz not null,
  acquired_at  timestamptz not null default now()
);

-- version: 8
-- Recording chunks compressed by the recorder (zstd of the asciicast event lines) instead of
-- plain text: about 7x less to write for terminal output, so recording keeps up with the relay.
-- Stored as it comes (storage external): the database's own compression would only spend CPU
-- on data that no longer shrinks. `last_ms` is the time of the chunk's last event, for ending a
-- recording its process left open. Chunks written before keep `events` and are read as before.
alter table recording_chunks add column data bytea;
alter table recording_chunks add column last_ms bigint;
alter table recording_chunks alter column events drop not null;
alter table recording_chunks alter column data set storage external;
alter table recording_chunks add constraint recording_chunks_payload check (events is not null or data is not null);

-- version: 9
-- Presence writes without index churn. A machine's status changes at every connect and
-- disconnect, and was part of `search_doc`: every such UPDATE changed an indexed column, so
-- each one added entries to all six of machines' indexes (the trigram index among them). With
-- status out of the document (a search term that could be a status also matches `status`,
-- src/machines/search.ts) and room left in each page (fillfactor 75), a presence update
-- touches no indexed column and stays on its page (a HOT update): about half the database
-- time of a reconnect storm on the embedded database. Re-adding the column rewrites the table,
-- so existing rows get the room too.
alter table machines set (fillfactor = 75);
-- `last_used_at` (written once a second for the keys used since) likewise: new pages keep room.
alter table agent_keys set (fillfactor = 80);
drop index machines_search_doc;
alter table machines drop column search_doc;
alter table machines add column search_doc text generated always as (lower(
  hostname || chr(10) || machine_uid || chr(10) ||
  coalesce(labels->>'company', '') || chr(10) || coalesce(labels->>'site', '') || chr(10) ||
  coalesce(labels->>'department', '') || chr(10) || coalesce(labels->>'device_type', '') || chr(10) ||
  tether_json_strings(labels->'tags') || chr(10) ||
  coalesce(inventory->'os'->>'name', '') || ' ' || coalesce(inventory->'os'->>'version', '') || chr(10) ||
  coalesce(inventory->>'kernel', '') || chr(10) || coalesce(inventory->'cpu'->>'model', '') || chr(10) ||
  coalesce(inventory->>'hostname', '') || chr(10) || coalesce(inventory->>'timezone', '') || chr(10) ||
  coalesce(inventory->>'agent_version', '') || chr(10) || coalesce(agent_version, '') || chr(10) ||
  tether_json_strings(inventory->'users') || chr(10) || tether_json_strings(inventory->'private_ips') || chr(10) ||
  tether_json_strings(inventory->'macs') || chr(10) || coalesce(external_ip, '') ||
  case when enrollment_state = 'pending' then chr(10) || 'pending' else '' end
)) stored;
create index machines_search_doc on machines using gin (search_doc public.gin_trgm_ops);

-- version: 10
-- Recording chunks hold the raw terminal output and its timing (zstd-compressed), no longer
-- the asciicast event lines: building the lines (UTF-8 decoding, JSON escaping) cost the
-- recorder about 2.5 times what compressing costs, and recordings are written far more often
-- than read, so the export builds them instead (src/recordings/chunk-codec.ts has the layout).
-- Rows written before keep their event lines and are read as before.
comment on column recording_chunks.data is 'zstd of "\0TR1", the mark count (u32 LE), the marks (f64 ms, u32, u32 each) and the raw output; before schema v10, zstd of asciicast event lines';

-- version: 11
-- Cheaper search documents. `search_doc` is recomputed by every UPDATE of a machine, presence
-- included, and the four calls of tether_json_strings were about a quarter of a presence UPDATE:
-- a function whose body is a query (an aggregate over a set-returning function) cannot be
-- inlined, so each call set up its own executor. The arrays it reads (users, IPs, MACs, tags)
-- are short: up to eight elements it is now one expression the planner inlines, and longer
-- arrays take the old query. Both give the same text (the elements one per line, JSON nulls
-- skipped), so stored documents are left as they are.
create function tether_json_strings_all(j jsonb) returns text language sql immutable parallel safe as $$ select coalesce(string_agg(t.v, chr(10)), '') from jsonb_array_elements_text(case when jsonb_typeof(j) = 'array' then j else '[]'::jsonb end) as t(v) $$;
create or replace function tether_json_strings(j jsonb) returns text language sql immutable parallel safe as $$
  select case
    when jsonb_typeof(j) is distinct from 'array' then ''
    when jsonb_array_length(j) > 8 then tether_json_strings_all(j)
    else coalesce(j->>0, '') || coalesce(chr(10) || (j->>1), '') || coalesce(chr(10) || (j->>2), '') || coalesce(chr(10) || (j->>3), '')
      || coalesce(chr(10) || (j->>4), '') || coalesce(chr(10) || (j->>5), '') || coalesce(chr(10) || (j->>6), '') || coalesce(chr(10) || (j->>7), '')
  end $$;

-- version: 12
-- `search_doc` rebuilt only when what it is made of changes. As a generated column it was
-- recomputed by every UPDATE of a machine: every connect and disconnect, whose presence update
-- sets the inventory again although it rarely changed. On the embedded database that was about
-- a third of a presence UPDATE's cost, and a reconnect storm is thousands of them. It is now a
-- plain column kept by triggers: on INSERT, and on an UPDATE of one of its sources that changes
-- its value (the WHEN compares them, which costs far less than building the document). The text
-- is the one of version 9, from tether_machine_search_doc; nothing but the triggers writes it.
-- The trigger function keeps the search_path it was created with, so an UPDATE from a session
-- whose path lacks Tether's schema (psql, a maintenance job) still finds the functions.
create function tether_machine_search_doc(hostname text, machine_uid text, labels jsonb, inventory jsonb, agent_version text, external_ip text, enrollment_state text) returns text language sql immutable parallel safe as $$
  select lower(
    hostname || chr(10) || machine_uid || chr(10) ||
    coalesce(labels->>'company', '') || chr(10) || coalesce(labels->>'site', '') || chr(10) ||
    coalesce(labels->>'department', '') || chr(10) || coalesce(labels->>'device_type', '') || chr(10) ||
    tether_json_strings(labels->'tags') || chr(10) ||
    coalesce(inventory->'os'->>'name', '') || ' ' || coalesce(inventory->'os'->>'version', '') || chr(10) ||
    coalesce(inventory->>'kernel', '') || chr(10) || coalesce(inventory->'cpu'->>'model', '') || chr(10) ||
    coalesce(inventory->>'hostname', '') || chr(10) || coalesce(inventory->>'timezone', '') || chr(10) ||
    coalesce(inventory->>'agent_version', '') || chr(10) || coalesce(agent_version, '') || chr(10) ||
    tether_json_strings(inventory->'users') || chr(10) || tether_json_strings(inventory->'private_ips') || chr(10) ||
    tether_json_strings(inventory->'macs') || chr(10) || coalesce(external_ip, '') ||
    case when enrollment_state = 'pending' then chr(10) || 'pending' else '' end)
$$;
create function tether_machines_search_doc() returns trigger language plpgsql set search_path from current as $$ begin new.search_doc := tether_machine_search_doc(new.hostname, new.machine_uid, new.labels, new.inventory, new.agent_version, new.external_ip, new.enrollment_state); return new; end $$;
drop index machines_search_doc;
alter table machines drop column search_doc;
alter table machines add column search_doc text not null default '';
update machines set search_doc = tether_machine_search_doc(hostname, machine_uid, labels, inventory, agent_version, external_ip, enrollment_state);
create trigger machines_search_doc_insert before insert on machines for each row execute function tether_machines_search_doc();
create trigger machines_search_doc_update before update of hostname, machine_uid, labels, inventory, agent_version, external_ip, enrollment_state on machines for each row
  when (old.hostname is distinct from new.hostname or old.machine_uid is distinct from new.machine_uid or old.labels is distinct from new.labels
        or old.inventory is distinct from new.inventory or old.agent_version is distinct from new.agent_version
        or old.external_ip is distinct from new.external_ip or old.enrollment_state is distinct from new.enrollment_state)
  execute function tether_machines_search_doc();
create index machines_search_doc on machines using gin (search_doc public.gin_trgm_ops);

-- version: 13
-- The audit log's actor filter matches an actor's id or its name (`? in (actor_id, actor_name)`,
-- src/audit/audit.ts). With an index on the id alone PostgreSQL can use neither and reads the
-- whole table; with the name indexed too it combines the two (a BitmapOr). Partial: agents and
-- the system act without a name, so a reconnect storm's events add nothing to it.
create index audit_events_actor_name on audit_events (tenant_id, actor_name, id desc) where actor_name is not null;

-- version: 14
-- A machine an admin disabled (M3, issue 4): its agent is refused at connect (close 4011) and a
-- live one is closed by the revocation sweep, which looks for machines disabled since its last
-- look; enabling it lets the agent back in with the keys it has. Orthogonal to enrollment_state.
alter table machines add column disabled_at timestamptz;
create index machines_disabled on machines (disabled_at) where disabled_at is not null;

-- version: 15
-- A viewer token's revocation counts for the session it names only: `DELETE
-- /api/sessions/:id/viewer-tokens/:token_id` takes any token id, so one recorded under another
-- session must neither revoke a token of this one nor keep its own revocation from being recorded.
alter table viewer_token_revocations drop constraint viewer_token_revocations_pkey;
alter table viewer_token_revocations add primary key (jti, session_id);

-- version: 16
-- Presence in a narrow table of its own. A machine's status and last-seen time change at every
-- connect and disconnect; in `machines` each such UPDATE wrote a new version of the whole row
-- (inventory and search document, 1–2 KB), a page held a handful of rows, and in a reconnect
-- storm most new versions found no room on their page: then every index of machines got new
-- entries, the trigram index among them, and the table grew by a page per few machines
-- (PostgreSQL's statistics over one storm: 60% of the updates not HOT, the table from 1,500
-- to 2,000 pages). Here a row is under 60 bytes, its page keeps half its room, and nothing
-- indexed changes: every presence update stays on its page. Each machine has exactly one row,
-- made with it (the trigger) and removed with it; the machine's details stay in `machines`.
-- The lock first, the strongest (the columns are dropped below anyway): a machine another process
-- inserted between the copy and the trigger would get no presence row, and a weaker lock raised
-- later could deadlock with that process's enrollment. The trigger comes before the copy.
lock table machines in access exclusive mode;
create table machine_presence (
  machine_id    uuid primary key references machines(id) on delete cascade,
  status        text not null default 'offline' check (status in ('online', 'offline')),
  last_seen_at  timestamptz
) with (fillfactor = 50);
create function tether_machine_presence_row() returns trigger language plpgsql set search_path from current as $$
  begin insert into machine_presence (machine_id) values (new.id); return null; end $$;
create trigger machines_presence_row after insert on machines for each row execute function tether_machine_presence_row();
insert into machine_presence (machine_id, status, last_seen_at) select id, status, last_seen_at from machines;
alter table machines drop column status;
alter table machines drop column last_seen_at;

-- version: 17
-- Removing a machine takes back its end users' grants (src/machines/machines.ts, removeMachines):
-- a machine that enrolls again is reachable only by whom an admin grants it anew, since it may
-- not be the computer it was. Grants to machines removed before this version go now, so that no
-- removed machine comes back with them. Unlike a removal from now on, this writes no audit rows
-- and leaves those end users in the rooms of the removed machines' (ended) sessions: room
-- members live in the rooms' actors, which SQL does not reach.
delete from user_machine_grants g using machines m where m.id = g.machine_id and m.deleted_at is not null;
