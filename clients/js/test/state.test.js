import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { PresenceClient, socketUrl } from "../presence-client.js";
import { fakeWebSocketClass, flush, setup } from "../testing/fakes.js";

describe("construction", () => {
  test("starts idle and opens nothing until connect()", () => {
    const env = setup();
    assert.equal(env.client.state, "idle");
    assert.equal(env.sockets.length, 0);
  });

  test("refuses missing url, userId or WebSocket", () => {
    const { FakeWebSocket } = fakeWebSocketClass();
    assert.throws(() => new PresenceClient({ userId: "u", WebSocket: FakeWebSocket }), TypeError);
    assert.throws(() => new PresenceClient({ url: "ws://x", WebSocket: FakeWebSocket }), TypeError);
    assert.throws(
      () => new PresenceClient({ url: "ws://x", userId: "u", WebSocket: undefined }),
      /no WebSocket constructor/,
    );
  });

  test("builds the socket URL with the user id and token encoded", () => {
    assert.equal(
      socketUrl("ws://h:8000", "a b/c", "t+k=="),
      "ws://h:8000/ws/connect/a%20b%2Fc?token=t%2Bk%3D%3D",
    );
    assert.equal(socketUrl("https://gw.example/", "u", "t"), "wss://gw.example/ws/connect/u?token=t");
    assert.equal(socketUrl("http://h:1", "u", null), "ws://h:1/ws/connect/u");
  });
});

describe("state machine", () => {
  test("idle -> connecting -> connected, with events in order", async () => {
    const env = setup();
    const { client, last, tokenCalls } = env;
    client.connect();
    assert.equal(client.state, "connecting");
    await flush();
    assert.deepEqual(tokenCalls, [{ forceRefresh: false }]);
    assert.match(last().url, /^ws:\/\/gateway\.test:8000\/ws\/connect\/user-1\?token=/);
    last().open();
    assert.equal(client.state, "connected");
    assert.deepEqual(
      env.events.map((e) => e.name),
      ["state", "connecting", "state", "connected"],
    );
    assert.deepEqual(env.named("state").map((s) => s.state), ["connecting", "connected"]);
  });

  test("a dropped connection goes to reconnecting, then connecting with a new token", async () => {
    const env = setup();
    const { client, clock, last, tokenCalls } = env;
    const first = await env.connectOpen();
    await clock.advance(20_000);
    first.serverClose(1006, "");
    assert.equal(client.state, "reconnecting");
    assert.deepEqual(env.named("disconnected"), [
      { code: 1006, reason: "", willReconnect: true, delay: 500 },
    ]);
    await clock.advance(500);
    assert.equal(client.state, "connecting");
    assert.equal(tokenCalls.length, 2, "a token is asked for on every connect");
    assert.notEqual(last(), first);
    assert.notEqual(last().token, first.token);
    last().open();
    assert.equal(client.state, "connected");
  });

  test("connect() while active is a no-op", async () => {
    const env = setup();
    await env.connectOpen();
    env.client.connect();
    await flush();
    assert.equal(env.sockets.length, 1);
    assert.equal(env.client.state, "connected");
  });

  test("close() closes the socket with 1000, emits disconnected and never reconnects", async () => {
    const env = setup();
    const { client, clock } = env;
    const ws = await env.connectOpen();
    client.close();
    assert.equal(client.state, "closed");
    assert.deepEqual(ws.closedWith, { code: 1000, reason: "client closed" });
    assert.deepEqual(env.named("disconnected"), [
      { code: 1000, reason: "client closed", willReconnect: false },
    ]);
    ws.serverClose(1000); // the late close event of the abandoned socket is ignored
    await clock.advance(60_000);
    assert.equal(env.sockets.length, 1);
    assert.deepEqual(clock.pending(), []);
  });

  test("close() while waiting to reconnect cancels the timer", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    ws.serverClose(1006);
    assert.equal(env.client.state, "reconnecting");
    env.client.close();
    assert.deepEqual(env.clock.pending(), []);
    assert.equal(env.client.state, "closed");
  });

  test("close() during getToken abandons the attempt", async () => {
    let release;
    const env = setup({ tokenFactory: () => new Promise((r) => (release = r)) });
    env.client.connect();
    await flush();
    env.client.close();
    release("late-token");
    await flush();
    assert.equal(env.sockets.length, 0);
    assert.equal(env.client.state, "closed");
  });

  test("connect() after close() starts over", async () => {
    const env = setup();
    await env.connectOpen();
    env.client.close();
    await env.connectOpen();
    assert.equal(env.client.state, "connected");
    assert.equal(env.sockets.length, 2);
  });

  test("reconnect: false ends in closed after a drop", async () => {
    const env = setup({ client: { reconnect: false } });
    const ws = await env.connectOpen();
    ws.serverClose(1006);
    assert.equal(env.client.state, "closed");
    assert.equal(env.named("disconnected")[0].willReconnect, false);
    assert.deepEqual(env.clock.pending(), []);
  });

  test("a getToken failure is reported and retried with backoff", async () => {
    let fail = true;
    const env = setup({
      tokenFactory: () => {
        if (fail) throw new Error("network down");
        return "tok";
      },
    });
    env.client.connect();
    await flush();
    assert.equal(env.client.state, "reconnecting");
    assert.equal(env.sockets.length, 0);
    assert.equal(env.named("error")[0].source, "getToken");
    assert.deepEqual(env.clock.pending(), [500]);
    fail = false;
    await env.clock.runNext();
    env.last().open();
    assert.equal(env.client.state, "connected");
  });

  test("a handshake that never completes is abandoned after connectTimeout", async () => {
    const env = setup();
    env.client.connect();
    await flush();
    const ws = env.last();
    await env.clock.advance(15_000);
    assert.equal(ws.closedWith.code, 1000);
    assert.deepEqual(env.named("disconnected")[0], {
      code: 1006,
      reason: "connect timeout",
      willReconnect: true,
      delay: 500,
    });
    assert.equal(env.client.state, "reconnecting");
  });

  test("without getToken the socket URL carries no token", async () => {
    const { FakeWebSocket, sockets } = fakeWebSocketClass();
    const client = new PresenceClient({ url: "ws://h", userId: "u", WebSocket: FakeWebSocket });
    client.connect();
    await flush();
    assert.equal(sockets[0].url, "ws://h/ws/connect/u");
    client.close();
  });

  test("a throwing listener is reported and does not break the client", async () => {
    const errors = [];
    const env = setup({ client: { reportError: (e) => errors.push(e) } });
    env.client.on("connected", () => {
      throw new Error("app bug");
    });
    await env.connectOpen();
    assert.equal(env.client.state, "connected");
    assert.equal(errors.length, 1);
    assert.equal(errors[0].message, "app bug");
  });

  test("on() returns an unsubscribe function", async () => {
    const env = setup();
    const seen = [];
    const off = env.client.on("state", (s) => seen.push(s.state));
    env.client.connect();
    off();
    await flush();
    env.last().open();
    assert.deepEqual(seen, ["connecting"]);
  });
});
