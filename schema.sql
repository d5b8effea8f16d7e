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
