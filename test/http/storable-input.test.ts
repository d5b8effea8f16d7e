import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { unstorableAt } from "../../src/protocol/storable.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

describe("unstorableAt", () => {
  test("finds a NUL or an unpaired surrogate, in values and keys, at any depth; bytes are not text", () => {
    expect(unstorableAt({ a: "fine", b: ["ok", { c: "é 👍" }] })).toBeNull();
    expect(unstorableAt("a\u0000b")).toBe("");
    expect(unstorableAt({ inventory: { users: ["alice", "b\u0000b"] } })).toBe("inventory.users[1]");
    expect(unstorableAt({ name: "x\ud800" })).toBe("name");
    expect(unstorableAt({ name: "\udc00x" })).toBe("name");
    expect(unstorableAt({ outer: { "k\u0000": 1 } })).toBe("outer.<key>");
    expect(unstorableAt({ bytes: new Uint8Array([0, 0xd8]) })).toBeNull();
    // An empty key adds nothing to the path before it (as the path has always been spelled).
    expect(unstorableAt({ "": { x: "\u0000" } })).toBe("x");
    expect(unstorableAt({ "": { "\u0000": 1 } })).toBe("<key>");
    expect(unstorableAt({ "": { a: { b: "\u0000" } } })).toBe("a.b");
    let deep: unknown = "\u0000";
    for (let i = 0; i < 100_000; i++) deep = [deep];
    expect(unstorableAt(deep)).toStartWith("[0][0]");
  });
});

/**
 * Text PostgreSQL cannot store (NUL, unpaired surrogates) in a request is refused with 400
 * before anything runs: it used to fail at the insert (500), or fail a journal commit shared
 * with other actors' events (503 for them all).
 */
for (const flavor of FLAVORS) {
  describe(`unstorable text in requests (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => {
      await app?.close();
    });
    const refused = (r: { status: number; body: any }, where: string) => {
      expect(r.status).toBe(400);
      expect(r.body).toMatchObject({ error_code: "VALIDATION_FAILED", detail: `${where}: text must not contain NUL characters or unpaired surrogates` });
    };

    test("in a body, a query or a path parameter: 400 naming the field, and nothing is written", async () => {
      const token = app.adminToken;
      refused(await app.call("POST", "/api/sites", { token, body: { site_code: "NULA", display_name: "a\u0000b", company: "Acme" } }), "body.display_name");
      refused(await app.call("POST", "/api/sites", { token, body: { site_code: "NULB", display_name: "a\ud800b", company: "Acme" } }), "body.display_name");
      refused(await app.call("POST", "/api/rooms", { token, body: { name: "room\u0000" } }), "body.name");
      refused(await app.call("GET", "/api/machines?q=%00x", { token }), "query.q");
      refused(await app.call("GET", "/api/sites/%00", { token }), "params.id");
      const sites = (await app.call("GET", "/api/sites", { token })).body.sites as Array<{ site_code: string }>;
      expect(sites.filter((s) => s.site_code.startsWith("NUL"))).toEqual([]);
    });

    test("a body nested deeper than 32 levels: 400 at once, not seconds spent on the validation error (or a 500)", async () => {
      // Elysia's validation error pretty-prints the refused value: quadratic in the depth
      // (~10 s for 30,000 levels) and a stack overflow (500) at 100,000.
      const nested = (levels: number) => `${'{"a":'.repeat(levels)}1${"}".repeat(levels)}`;
      const post = (body: string) => fetch(`${app.url}/api/rooms`, { method: "POST", headers: { authorization: `Bearer ${app.adminToken}`, "content-type": "application/json" }, body });
      for (const levels of [32, 100_000]) {
        const t0 = performance.now();
        const r = await post(`{"name":"deep","x":${nested(levels)}}`);
        expect(r.status).toBe(400);
        expect(await r.json()).toMatchObject({ error_code: "VALIDATION_FAILED", detail: "body: nested deeper than 32 levels" });
        expect(performance.now() - t0).toBeLessThan(1_000);
      }
      // 32 levels in all is still validated as usual (here: a name that is not a string).
      const r = await post(`{"name":${nested(31)}}`);
      expect(r.status).toBe(400);
      expect((await r.json()).detail).toStartWith("body.name:");
    });

    test("a room message with a NUL is refused, and posts beside it are stored", async () => {
      const token = app.adminToken;
      const room = await app.call("POST", "/api/rooms", { token, body: { name: "nul-room" } });
      expect(room.status).toBe(201);
      const posts = await Promise.all([
        app.call("POST", `/api/rooms/${room.body.id}/messages`, { token, body: { body: "before" } }),
        app.call("POST", `/api/rooms/${room.body.id}/messages`, { token, body: { body: "bad\u0000" } }),
        app.call("POST", `/api/rooms/${room.body.id}/messages`, { token, body: { body: "after" } }),
      ]);
      expect(posts.map((p) => p.status)).toEqual([201, 400, 201]);
      const history = await app.call("GET", `/api/rooms/${room.body.id}/messages`, { token });
      expect(history.body.messages.map((m: { body: string }) => m.body).sort()).toEqual(["after", "before"]);
    });
  });
}
