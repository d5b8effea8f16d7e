import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { enrolledMachine, siteWithKey, uniq, type SiteWithKey } from "../machines/fixtures.ts";

/**
 * Machine search (M5): q terms and scopes, filters, sorts with cursor pages, end-user
 * visibility, bad input. Machines are enrolled through the API; inventory and presence (which
 * the machine actor keeps up to date) are written by SQL, as the actor's projection would.
 */

const HOUR = 3_600_000;

interface Seed {
  hostname: string;
  site: "a" | "b";
  tags: string[];
  inventory?: Record<string, unknown>;
  status?: "online" | "offline";
  lastSeenAgoMs?: number | null;
  externalIp?: string;
  agentVersion?: string;
  pending?: boolean;
}

const SEEDS: Seed[] = [
  {
    hostname: "ALPHA-WS01", site: "a", tags: ["prod", "finance"], status: "online", lastSeenAgoMs: 60_000, externalIp: "203.0.113.7", agentVersion: "1.2.0",
    inventory: { os: { name: "Windows 11 Pro", version: "23H2" }, kernel: "10.0.22631", cpu: { model: "Intel Core i7-1185G7", cores: 8 }, users: ["alice", "Bob Smith"], private_ips: ["10.0.0.5"], macs: ["AA:BB:CC:00:11:22"], timezone: "Europe/Berlin", agent_version: "1.2.0" },
  },
  {
    hostname: "beta-srv02", site: "a", tags: ["prod", "linux"], status: "offline", lastSeenAgoMs: 48 * HOUR, externalIp: "198.51.100.20", agentVersion: "1.1.9",
    inventory: { os: { name: "Ubuntu", version: "22.04" }, kernel: "6.5.0-generic", cpu: { model: "AMD EPYC 7302", cores: 16 }, users: ["root", "carol"], private_ips: ["10.0.1.9"], macs: ["de:ad:be:ef:00:01"], timezone: "UTC" },
  },
  {
    hostname: "gamma-lt03", site: "b", tags: ["dev"], status: "online", lastSeenAgoMs: 5 * 60_000,
    inventory: { os: { name: "macOS", version: "14.4" }, users: ["dave"], private_ips: ["192.168.1.33"], macs: [], timezone: "America/New_York" },
  },
  { hostname: "delta-ws04", site: "b", tags: [], lastSeenAgoMs: null, pending: true },
  // Two machines whose sort keys tie (same lower-cased hostname, same last seen): the id breaks the tie.
  { hostname: "echo", site: "b", tags: ["tie"], status: "offline", lastSeenAgoMs: 3 * HOUR },
  { hostname: "ECHO", site: "b", tags: ["tie"], status: "offline", lastSeenAgoMs: 3 * HOUR },
];

for (const flavor of FLAVORS) {
  describe(`machine search (${flavor})`, () => {
    let app: TestApp;
    let siteA: SiteWithKey;
    let siteB: SiteWithKey;
    const id: Record<string, string> = {};
    const byId: Record<string, string> = {};
    let created: string[] = [];
    const now = Date.now();

    beforeAll(async () => {
      app = await startTestApp(flavor);
      siteA = await siteWithKey(app, uniq("NORTH").toUpperCase(), "Acme");
      siteB = await siteWithKey(app, uniq("SOUTH").toUpperCase(), "Globex");
      const lastSeenTie = new Date(now - 3 * HOUR).toISOString();
      for (const s of SEEDS) {
        const m = await enrolledMachine(app, s.site === "a" ? siteA : siteB, { hostname: s.hostname, labels: { department: "IT", tags: s.tags } });
        id[s.hostname] = m.id;
        byId[m.id] = s.hostname;
        const lastSeen = s.lastSeenAgoMs === null || s.lastSeenAgoMs === undefined ? null : s.lastSeenAgoMs === 3 * HOUR ? lastSeenTie : new Date(now - s.lastSeenAgoMs).toISOString();
        await app.server.store.query(
          `update machines set inventory = $2::text::jsonb, external_ip = $3, agent_version = $4, enrollment_state = $5 where id = $1`,
          [m.id, JSON.stringify(s.inventory ?? {}), s.externalIp ?? null, s.agentVersion ?? null, s.pending ? "pending" : "active"]);
        await app.server.store.query("update machine_presence set status = $2, last_seen_at = $3::text::timestamptz where machine_id = $1", [m.id, s.status ?? "offline", lastSeen]);
      }
      created = SEEDS.map((s) => id[s.hostname]!);
    }, 60_000);
    afterAll(async () => app?.close());

    const get = (params: Record<string, string>, token = app.adminToken) =>
      app.call("GET", `/api/machines?${new URLSearchParams(params)}`, { token });
    /** The hostnames q finds (one page of 500), sorted. */
    const find = async (q: string, extra: Record<string, string> = {}, token?: string) => {
      const r = await get({ q, limit: "500", ...extra }, token);
      expect(r.status).toBe(200);
      return (r.body.machines as any[]).map((m) => m.hostname as string).sort();
    };

    test("free text: a case-insensitive substring of any attribute", async () => {
      expect(await find("alpha")).toEqual(["ALPHA-WS01"]);
      expect(await find("WS0")).toEqual(["ALPHA-WS01", "delta-ws04"]);
      expect(await find("epyc")).toEqual(["beta-srv02"]); // cpu model
      expect(await find("generic")).toEqual(["beta-srv02"]); // kernel
      expect(await find("aa:bb:cc")).toEqual(["ALPHA-WS01"]); // a MAC: `aa:` is no scope
      expect(await find("DE:AD")).toEqual(["beta-srv02"]);
      expect(await find("203.0.113")).toEqual(["ALPHA-WS01"]); // external IP
      expect(await find("192.168.")).toEqual(["gamma-lt03"]); // private IP
      expect(await find("europe/BERLIN")).toEqual(["ALPHA-WS01"]); // time zone
      expect(await find("1.1.9")).toEqual(["beta-srv02"]); // agent version
      expect(await find("CAROL")).toEqual(["beta-srv02"]); // user
      expect(await find("finance")).toEqual(["ALPHA-WS01"]); // tag
      expect(await find("globex")).toEqual(["ECHO", "delta-ws04", "echo", "gamma-lt03"]); // company label
      expect(await find(siteA.code.toLowerCase())).toEqual(["ALPHA-WS01", "beta-srv02"]); // site code
      expect(await find('"macos 14.4"')).toEqual(["gamma-lt03"]); // os name + version
      expect(await find("pending")).toEqual(["delta-ws04"]);
      expect(await find("nothing-like-this")).toEqual([]);
      // LIKE wildcards in a term are literal characters.
      expect(await find("%")).toEqual([]);
      expect(await find("_")).toEqual(["gamma-lt03"]); // America/New_York: a literal underscore only
      expect(await find("a%a")).toEqual([]);
      // Empty or blank q: everything.
      expect((await find("   ")).length).toBe(SEEDS.length);
    });

    test("machine_uid and site display name are searchable", async () => {
      const [row] = await app.server.store.query<{ machine_uid: string }>("select machine_uid from machines where id = $1", [id["gamma-lt03"]]);
      expect(await find(row!.machine_uid.toUpperCase())).toEqual(["gamma-lt03"]);
      await app.server.store.query("update sites set display_name = 'Harbour Depot' where id = $1", [siteB.id]);
      expect(await find("harbour")).toEqual(["ECHO", "delta-ws04", "echo", "gamma-lt03"]);
      expect(await find("site:depot")).toEqual(["ECHO", "delta-ws04", "echo", "gamma-lt03"]);
    });

    test("scopes match only their field", async () => {
      expect(await find("os:ubuntu")).toEqual(["beta-srv02"]);
      expect(await find('os:"windows 11"')).toEqual(["ALPHA-WS01"]);
      expect(await find("OS:23h2")).toEqual(["ALPHA-WS01"]);
      expect(await find("os:carol")).toEqual([]);
      expect(await find("user:carol")).toEqual(["beta-srv02"]);
      expect(await find('user:"bob smith"')).toEqual(["ALPHA-WS01"]);
      expect(await find("user:ubuntu")).toEqual([]);
      expect(await find("ip:10.0.")).toEqual(["ALPHA-WS01", "beta-srv02"]);
      expect(await find("ip:198.51")).toEqual(["beta-srv02"]); // external
      expect(await find("ip:aa:bb")).toEqual([]);
      expect(await find("tag:fin")).toEqual(["ALPHA-WS01"]);
      expect(await find("tag:prod")).toEqual(["ALPHA-WS01", "beta-srv02"]);
      expect(await find("tag:alpha")).toEqual([]);
      expect(await find(`site:${siteB.code}`)).toEqual(["ECHO", "delta-ws04", "echo", "gamma-lt03"]);
      expect(await find(`site:${siteA.code.toLowerCase()}`)).toEqual(["ALPHA-WS01", "beta-srv02"]);
      expect(await find("site:epyc")).toEqual([]);
      expect(await find("status:online")).toEqual(["ALPHA-WS01", "gamma-lt03"]);
      expect(await find("status:OFFLINE")).toEqual(["ECHO", "beta-srv02", "delta-ws04", "echo"]);
      expect(await find("status:pending")).toEqual(["delta-ws04"]);
      expect(await find("host:ws")).toEqual(["ALPHA-WS01", "delta-ws04"]);
      expect(await find("host:alice")).toEqual([]);
      // An unknown prefix is part of the term, not a scope.
      expect(await find("foo:bar")).toEqual([]);
    });

    test("terms are ANDed; a quoted phrase is one term", async () => {
      expect(await find("prod ubuntu")).toEqual(["beta-srv02"]);
      expect(await find("prod   online")).toEqual(["ALPHA-WS01"]);
      // Status is matched on its column (schema version 9), still as a substring like any term.
      expect(await find("prod OFFL")).toEqual(["beta-srv02"]);
      expect(new Set(await find("tie line"))).toEqual(new Set(["echo", "ECHO"]));
      expect(await find("tag:prod status:offline")).toEqual(["beta-srv02"]);
      expect(await find(`site:${siteB.code} status:online os:mac`)).toEqual(["gamma-lt03"]);
      expect(await find('"bob smith"')).toEqual(["ALPHA-WS01"]);
      expect(await find('"bob    SMITH"')).toEqual(["ALPHA-WS01"]);
      expect(await find("bob carol")).toEqual([]);
      expect(await find('"smith bob"')).toEqual([]);
      expect(await find('"windows 11 pro" alice')).toEqual(["ALPHA-WS01"]);
      expect(await find('"unterminated phrase')).toEqual([]);
    });

    test("filters: site_id, status, tag (exact), enrollment_state; combined with q", async () => {
      expect(await find("", { site_id: siteA.id })).toEqual(["ALPHA-WS01", "beta-srv02"]);
      expect(await find("", { status: "online" })).toEqual(["ALPHA-WS01", "gamma-lt03"]);
      expect(await find("", { tag: "prod" })).toEqual(["ALPHA-WS01", "beta-srv02"]);
      expect(await find("", { tag: "pro" })).toEqual([]);
      expect(await find("", { enrollment_state: "pending" })).toEqual(["delta-ws04"]);
      expect(await find("", { enrollment_state: "active", site_id: siteB.id, status: "offline" })).toEqual(["ECHO", "echo"]);
      expect(await find("10.0", { status: "offline" })).toEqual(["beta-srv02"]);
    });

    test("rows keep the list's fields and show presence", async () => {
      const r = await get({ q: "alpha" });
      expect(r.body.machines).toEqual([{
        id: id["ALPHA-WS01"], hostname: "ALPHA-WS01", site_id: siteA.id, site_code: siteA.code,
        labels: { company: "Acme", site: `${siteA.code} office`, department: "IT", device_type: "", tags: ["prod", "finance"] },
        enrollment_state: "active", status: "online", last_seen_at: new Date(now - 60_000).toISOString(), created_at: expect.any(String),
        inventory: SEEDS[0]!.inventory, external_ip: "203.0.113.7", agent_version: "1.2.0", disabled_at: null, live_sessions: [],
      }]);
      expect(r.body.next_cursor).toBeNull();
    });

    const walk = async (params: Record<string, string>) => {
      const seen: string[] = [];
      let cursor: string | null = null;
      for (let pages = 0; pages < 50; pages++) {
        const r: { status: number; body: any } = await get({ ...params, ...(cursor ? { cursor } : {}) });
        expect(r.status).toBe(200);
        seen.push(...r.body.machines.map((m: any) => m.id));
        cursor = r.body.next_cursor;
        if (!cursor) break;
      }
      expect(cursor).toBeNull();
      return seen;
    };
    const tieOrder = () => [id.echo!, id.ECHO!].sort();

    test("each sort, both directions, walks every row once across pages, ties broken by id", async () => {
      const hostAsc = ["ALPHA-WS01", "beta-srv02", "delta-ws04"].map((h) => id[h]!).concat(tieOrder(), [id["gamma-lt03"]!]);
      const seenAsc = ["delta-ws04"].map((h) => id[h]!).concat([id["beta-srv02"]!], tieOrder(), [id["gamma-lt03"]!, id["ALPHA-WS01"]!]);
      const expected: Record<string, string[]> = { hostname: hostAsc, last_seen: seenAsc, created };
      for (const sort of ["hostname", "last_seen", "created"]) {
        for (const order of ["asc", "desc"]) {
          const want = order === "asc" ? expected[sort]! : [...expected[sort]!].reverse();
          for (const limit of ["1", "2", "4", "500"]) {
            const got = await walk({ sort, order, limit });
            expect(new Set(got).size).toBe(got.length);
            expect(got.map((x) => byId[x])).toEqual(want.map((x) => byId[x]));
            expect(got).toEqual(want);
          }
        }
      }
      // Default: hostname ascending with q, enrollment order without.
      expect(await walk({ q: "status:offline", limit: "2" })).toEqual([id["beta-srv02"]!, id["delta-ws04"]!, ...tieOrder()]);
      expect(await walk({ limit: "2" })).toEqual(created);
      // Searched and filtered pages.
      expect(await walk({ q: "tag:prod", sort: "last_seen", order: "desc", limit: "1" })).toEqual([id["ALPHA-WS01"]!, id["beta-srv02"]!]);
    });

    test("rows changing between pages are neither repeated nor skipped when their key is unchanged", async () => {
      const first = await get({ sort: "hostname", limit: "3" });
      // Presence written concurrently (as the machine actor does) does not move hostname keys.
      await app.server.store.query("update machine_presence set status = 'online', last_seen_at = now() where machine_id = $1", [id.echo]);
      const rest = await walk({ sort: "hostname", limit: "3", cursor: first.body.next_cursor });
      const all = [...first.body.machines.map((m: any) => m.id), ...rest];
      expect(all.map((x) => byId[x])).toEqual(["ALPHA-WS01", "beta-srv02", "delta-ws04", ...tieOrder().map((x) => byId[x]), "gamma-lt03"]);
      await app.server.store.query("update machine_presence set status = 'offline', last_seen_at = $2::text::timestamptz where machine_id = $1", [id.echo, new Date(now - 3 * HOUR).toISOString()]);
    });

    test("a cursor belongs to its sort; a forged cursor is a 400", async () => {
      const r = await get({ sort: "hostname", limit: "1" });
      expect(r.body.next_cursor).toEqual(expect.any(String));
      const other = await get({ sort: "created", limit: "1", cursor: r.body.next_cursor });
      expect(other.status).toBe(400);
      expect(other.body.detail).toContain("query.cursor");
      const desc = await get({ sort: "hostname", order: "desc", limit: "1", cursor: r.body.next_cursor });
      expect(desc.status).toBe(400);
      for (const cursor of ["nope", id["ALPHA-WS01"]!, Buffer.from(JSON.stringify([1, "created", "asc", "yesterday", id.echo])).toString("base64url")]) {
        const bad = await get({ cursor });
        expect(bad.status).toBe(400);
        expect(bad.body.detail).toContain("query.cursor");
      }
    });

    test("an end user finds only granted machines", async () => {
      const u = await app.user("end_user");
      for (const h of ["ALPHA-WS01", "gamma-lt03"]) {
        const g = await app.call("POST", `/api/users/${u.id}/grants`, { token: app.adminToken, body: { machine_id: id[h] } });
        expect([200, 201]).toContain(g.status);
      }
      expect(await find("", {}, u.token)).toEqual(["ALPHA-WS01", "gamma-lt03"]);
      expect(await find("prod", {}, u.token)).toEqual(["ALPHA-WS01"]);
      expect(await find("ubuntu", {}, u.token)).toEqual([]);
      expect(await find("status:online", {}, u.token)).toEqual(["ALPHA-WS01", "gamma-lt03"]);
      expect(await find("", { site_id: siteA.id }, u.token)).toEqual(["ALPHA-WS01"]);
      const seen: string[] = [];
      let cursor: string | null = null;
      do {
        const r: any = await get({ sort: "hostname", limit: "1", ...(cursor ? { cursor } : {}) }, u.token);
        seen.push(...r.body.machines.map((m: any) => m.hostname));
        cursor = r.body.next_cursor;
      } while (cursor && seen.length < 10);
      expect(seen).toEqual(["ALPHA-WS01", "gamma-lt03"]);
    });

    test("bad input is a 400 naming the parameter", async () => {
      const cases: Array<[Record<string, string>, string]> = [
        [{ sort: "name" }, "query.sort"],
        [{ order: "up" }, "query.order"],
        [{ status: "pending" }, "query.status"],
        [{ status: "ONLINE" }, "query.status"],
        [{ enrollment_state: "removed" }, "query.enrollment_state"],
        [{ site_id: "nope" }, "query.site_id"],
        [{ tag: "" }, "query.tag"],
        [{ limit: "501" }, "query.limit"],
        [{ limit: "0" }, "query.limit"],
        [{ limit: "ten" }, "query.limit"],
        [{ q: "os:" }, "query.q"],
        [{ q: 'user:""' }, "query.q"],
        [{ q: "status:sleeping" }, "query.q"],
        [{ q: "x".repeat(513) }, "query.q"],
        [{ q: Array.from({ length: 17 }, (_, i) => `t${i}`).join(" ") }, "query.q"],
      ];
      for (const [params, field] of cases) {
        const r = await get(params);
        expect({ params, status: r.status }).toEqual({ params, status: 400 });
        expect(r.body.detail).toContain(field);
      }
      expect((await get({}, "")).status).toBe(401);
    });
  });
}
