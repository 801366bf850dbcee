import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { SIGNED_OUT_REASON } from "../presence-client.js";
import { flush, setup } from "../testing/fakes.js";

const TIMEOUT_TEXT =
  "Your session has expired due to inactivity (3 hours). Please sign in again.";

describe("reaction to close codes", () => {
  test("4401: one forced token refresh and an immediate reconnect", async () => {
    const env = setup();
    const { client, clock, tokenCalls } = env;
    const ws = await env.connectOpen();
    ws.serverClose(4401, "token expired");
    assert.equal(client.state, "reconnecting");
    assert.deepEqual(env.named("disconnected"), [
      { code: 4401, reason: "token expired", willReconnect: true, delay: 0 },
    ]);
    await clock.advance(0);
    assert.deepEqual(tokenCalls, [{ forceRefresh: false }, { forceRefresh: true }]);
    env.last().open();
    assert.equal(client.state, "connected");
  });

  test("4401 twice in a row: auth_error, authError event, no reconnect", async () => {
    const env = setup();
    const { client, clock, tokenCalls } = env;
    (await env.connectOpen()).serverClose(4401, "invalid token");
    await clock.advance(0);
    env.last().open();
    env.last().serverClose(4401, "token revoked: signed out since");
    assert.equal(client.state, "auth_error");
    assert.deepEqual(env.named("authError"), [
      { code: 4401, reason: "token revoked: signed out since" },
    ]);
    assert.deepEqual(env.named("disconnected").at(-1), {
      code: 4401,
      reason: "token revoked: signed out since",
      willReconnect: false,
    });
    await clock.advance(60_000);
    assert.equal(env.sockets.length, 2);
    assert.equal(tokenCalls.length, 2);
    assert.deepEqual(clock.pending(), []);
  });

  test("4401 on a connection that had worked gets its own forced refresh", async () => {
    const env = setup();
    const { client, clock } = env;
    (await env.connectOpen()).serverClose(4401, "invalid token");
    await clock.advance(0);
    env.last().open();
    env.last().receive({ type: "ping" }); // accepted: the earlier refusal is forgotten
    env.last().serverClose(4401, "token expired");
    assert.equal(client.state, "reconnecting");
    await clock.advance(0);
    assert.deepEqual(env.tokenCalls.at(-1), { forceRefresh: true });
  });

  test("4401 and the forced refresh fails: auth_error", async () => {
    let calls = 0;
    const env = setup({
      tokenFactory: () => {
        if (++calls > 1) throw new Error("auth/user-token-expired");
        return "tok";
      },
    });
    (await env.connectOpen()).serverClose(4401, "token revoked: signed out since");
    await env.clock.advance(0);
    assert.equal(env.client.state, "auth_error");
    assert.equal(env.named("authError").length, 1);
    assert.equal(env.sockets.length, 1);
  });

  test("4403: stop with auth_error (token for another user)", async () => {
    const env = setup();
    (await env.connectOpen()).serverClose(4403, "token is for another user");
    assert.equal(env.client.state, "auth_error");
    assert.deepEqual(env.named("authError"), [{ code: 4403, reason: "token is for another user" }]);
    assert.equal(env.named("disconnected")[0].willReconnect, false);
    await env.clock.advance(60_000);
    assert.equal(env.sockets.length, 1);
    assert.equal(env.tokenCalls.length, 1);
  });

  test("timeout message then 4408: signedOut with the server's text, never reconnect", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    ws.receive({ type: "timeout", message: TIMEOUT_TEXT, timestamp: "t" });
    assert.equal(env.client.state, "signed_out");
    assert.deepEqual(env.named("signedOut"), [
      { reason: "signed out for inactivity", message: TIMEOUT_TEXT, code: 4408 },
    ]);
    ws.serverClose(4408, "session expired");
    assert.equal(env.client.state, "signed_out");
    assert.deepEqual(env.named("disconnected"), [
      { code: 4408, reason: "session expired", willReconnect: false },
    ]);
    assert.equal(env.named("signedOut").length, 1, "signedOut is emitted once");
    await env.clock.advance(3_600_000);
    assert.equal(env.sockets.length, 1);
  });

  test("4408 without the timeout message also signs out", async () => {
    const env = setup();
    (await env.connectOpen()).serverClose(4408, "session expired");
    assert.equal(env.client.state, "signed_out");
    const [event] = env.named("signedOut");
    assert.equal(event.reason, SIGNED_OUT_REASON);
    assert.equal(event.message, null);
    assert.deepEqual(env.clock.pending(), []);
  });

  test("signed_out message then 4410: signedOut by the service, never reconnect", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const text = "You have been signed out. Please sign in again.";
    ws.receive({ type: "signed_out", reason: "signed out by the service", message: text });
    assert.equal(env.client.state, "signed_out");
    assert.deepEqual(env.named("signedOut"), [
      { reason: "signed out by the service", message: text, code: 4410 },
    ]);
    ws.serverClose(4410, "signed out by the service");
    assert.equal(env.named("signedOut").length, 1, "signedOut is emitted once");
    await env.clock.advance(3_600_000);
    assert.equal(env.sockets.length, 1);
  });

  test("4410 without the message also signs out, by the service", async () => {
    const env = setup();
    (await env.connectOpen()).serverClose(4410, "signed out by the service");
    assert.equal(env.client.state, "signed_out");
    const [event] = env.named("signedOut");
    assert.deepEqual([event.reason, event.code], ["signed out by the service", 4410]);
    assert.deepEqual(env.clock.pending(), []);
  });

  test("after signed_out no ping is answered", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    ws.receive({ type: "timeout", message: TIMEOUT_TEXT });
    ws.receive({ type: "ping" });
    assert.deepEqual(ws.frames(), []);
  });

  test("4429: back off from a 5 s floor", async () => {
    const env = setup();
    const { clock } = env;
    (await env.connectOpen()).serverClose(4429, "too many sockets for this user");
    assert.equal(env.client.state, "reconnecting");
    assert.equal(env.named("disconnected")[0].delay, 5000 + 500);
    await clock.runNext();
    env.last().open();
    env.last().serverClose(4429, "too many sockets for this user");
    assert.equal(env.named("disconnected")[1].delay, 5000 + 1000);
  });

  test("1012: reconnect within 0-2 s, jittered, without growing the backoff", async () => {
    const randoms = [0.3, 0.7, 1];
    let i = 0;
    const env = setup({ client: { random: () => randoms[i++] } });
    const { clock } = env;
    (await env.connectOpen()).serverClose(1012, "");
    assert.equal(env.named("disconnected")[0].delay, 0.3 * 2000);
    await clock.runNext();
    env.last().open();
    env.last().serverClose(1012, "");
    assert.equal(env.named("disconnected")[1].delay, 0.7 * 2000);
    await clock.runNext();
    env.last().serverClose(1006, ""); // never opened: the normal schedule starts at attempt 0
    assert.equal(env.named("disconnected")[2].delay, 1 * 500);
  });

  for (const code of [1006, 1000, 1011, 1009, 4000]) {
    test(`${code}: reconnect with the normal backoff`, async () => {
      const env = setup();
      (await env.connectOpen()).serverClose(code, "");
      assert.equal(env.client.state, "reconnecting");
      assert.deepEqual(env.named("disconnected"), [
        { code, reason: "", willReconnect: true, delay: 500 },
      ]);
      await env.clock.runNext();
      assert.deepEqual(env.tokenCalls.at(-1), { forceRefresh: false });
      assert.equal(env.sockets.length, 2);
    });
  }

  test("4400: stop (invalid user id)", async () => {
    const env = setup();
    (await env.connectOpen()).serverClose(4400, "invalid user id");
    assert.equal(env.client.state, "closed");
    assert.equal(env.named("error").at(-1).code, "invalid_user_id");
    assert.deepEqual(env.named("disconnected"), [
      { code: 4400, reason: "invalid user id", willReconnect: false },
    ]);
    await env.clock.advance(60_000);
    assert.equal(env.sockets.length, 1);
  });

  test("connect() after a sign-out starts a new session", async () => {
    const env = setup();
    (await env.connectOpen()).serverClose(4408, "session expired");
    env.client.connect();
    await flush();
    env.last().open();
    assert.equal(env.client.state, "connected");
  });
});
