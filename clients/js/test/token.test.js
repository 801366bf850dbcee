import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { refreshDelay, tokenExpiry } from "../presence-client.js";
import { flush, jwt, setup } from "../testing/fakes.js";

const MIN = 60_000;

describe("tokenExpiry", () => {
  test("reads exp from the base64url payload, without verifying", () => {
    assert.equal(tokenExpiry(jwt({ exp: 1_700_003_600 })), 1_700_003_600_000);
  });

  test("handles payloads whose base64url uses - and _ and no padding", () => {
    const token = jwt({ exp: 1_800_000_000, name: "ü?>~~~" });
    assert.match(token.split(".")[1], /[-_]/);
    assert.equal(tokenExpiry(token), 1_800_000_000_000);
  });

  test("returns null for anything that is not a JWT with a numeric exp", () => {
    for (const token of [null, "", "abc", "a.b.c", jwt({ sub: "x" }), jwt({ exp: "soon" })]) {
      assert.equal(tokenExpiry(token), null);
    }
  });
});

describe("refreshDelay", () => {
  test("5 minutes before expiry for an hour-long token", () => {
    assert.equal(refreshDelay(60 * MIN, 0), 55 * MIN);
  });

  test("halfway for a short-lived token", () => {
    assert.equal(refreshDelay(8 * MIN, 0), 4 * MIN);
    assert.equal(refreshDelay(10 * MIN, 0), 5 * MIN);
  });

  test("at once for an expired token", () => {
    assert.equal(refreshDelay(0, 1000), 0);
  });
});

/** A token factory: each call issues a token valid `lifetime` ms from the clock's now. */
function issuer(clock, lifetime = 60 * MIN) {
  let n = 0;
  return () => jwt({ exp: (clock.now() + lifetime) / 1000, n: ++n });
}

describe("token refresh on a live socket", () => {
  test("sends {type: auth} 5 minutes before the token expires", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    await env.clock.advance(55 * MIN - 1);
    assert.deepEqual(ws.frames(), []);
    await env.clock.advance(1);
    const frames = ws.frames();
    assert.equal(frames.length, 1);
    assert.equal(frames[0].type, "auth");
    assert.notEqual(frames[0].token, ws.token);
    assert.ok(tokenExpiry(frames[0].token) > tokenExpiry(ws.token));
  });

  test("auth_ok schedules the next refresh from the new token", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    await env.clock.advance(55 * MIN);
    ws.receive({ type: "auth_ok", expires_at: "2030-01-01T00:00:00+00:00", timestamp: "t" });
    assert.deepEqual(env.named("tokenRefreshed"), [{ expiresAt: "2030-01-01T00:00:00+00:00" }]);
    await env.clock.advance(55 * MIN);
    assert.deepEqual(
      ws.frames().map((f) => f.type),
      ["auth", "auth"],
    );
  });

  test("a short-lived token is refreshed halfway", async () => {
    const env = setup({ tokenFactory: () => issuer(env.clock, 6 * MIN)() });
    const ws = await env.connectOpen();
    await env.clock.advance(3 * MIN - 1);
    assert.deepEqual(ws.frames(), []);
    await env.clock.advance(1);
    assert.equal(ws.frames()[0].type, "auth");
  });

  test("when getToken hands back the cached token, it is asked again with forceRefresh", async () => {
    let cached = null;
    const env = setup({
      tokenFactory: ({ forceRefresh }) => {
        if (!cached || forceRefresh) cached = jwt({ exp: (env.clock.now() + 60 * MIN) / 1000 });
        return cached;
      },
    });
    const ws = await env.connectOpen();
    await env.clock.advance(55 * MIN);
    assert.deepEqual(env.tokenCalls, [
      { forceRefresh: false },
      { forceRefresh: false },
      { forceRefresh: true },
    ]);
    assert.equal(ws.frames()[0].token, cached);
    assert.notEqual(ws.frames()[0].token, ws.token);
  });

  test("invalid_token after a refresh: one forced retry", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    await env.clock.advance(55 * MIN);
    ws.receive({ type: "error", code: "invalid_token", message: "invalid token" });
    await flush();
    assert.deepEqual(env.tokenCalls.at(-1), { forceRefresh: true });
    assert.deepEqual(
      ws.frames().map((f) => f.type),
      ["auth", "auth"],
    );
    assert.equal(env.named("error")[0].code, "invalid_token");
    // The forced token is refused too: no tight loop; another try 30 s later, until the
    // gateway accepts one or closes the socket (4401 after TOKEN_GRACE).
    ws.receive({ type: "error", code: "invalid_token", message: "invalid token" });
    await flush();
    assert.equal(ws.frames().length, 2);
    assert.equal(env.client.state, "connected");
    await env.clock.advance(30_000 - 1);
    assert.equal(ws.frames().length, 2);
    await env.clock.advance(1);
    assert.equal(ws.frames().length, 3);
  });

  test("a failed refresh is reported and retried 30 s later", async () => {
    let calls = 0;
    const env = setup({
      tokenFactory: () => {
        calls++;
        if (calls === 2) throw new Error("offline");
        return jwt({ exp: (env.clock.now() + 60 * MIN) / 1000, calls });
      },
    });
    const ws = await env.connectOpen();
    await env.clock.advance(55 * MIN);
    assert.equal(env.named("error")[0].source, "getToken");
    assert.deepEqual(ws.frames(), []);
    await env.clock.advance(30_000);
    assert.equal(ws.frames()[0].type, "auth");
  });

  test("no refresh timer survives a disconnect", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    ws.serverClose(1006);
    assert.deepEqual(env.clock.pending(), [500]);
  });

  test("refreshToken() sends a token that changed (onIdTokenChanged) and skips one that did not", async () => {
    let current = null;
    const env = setup({ tokenFactory: () => current });
    current = jwt({ exp: (env.clock.now() + 60 * MIN) / 1000, v: 1 });
    const ws = await env.connectOpen();
    await env.client.refreshToken();
    assert.deepEqual(ws.frames(), []);
    current = jwt({ exp: (env.clock.now() + 61 * MIN) / 1000, v: 2 });
    await env.client.refreshToken();
    assert.deepEqual(ws.frames(), [{ type: "auth", token: current }]);
  });

  test("a token without exp schedules no refresh", async () => {
    const env = setup({ tokenFactory: () => "opaque-token" });
    await env.connectOpen();
    assert.deepEqual(env.clock.pending(), []);
  });
});
