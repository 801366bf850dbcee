import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { setup } from "../testing/fakes.js";

const PING = {
  type: "ping",
  timestamp: "2025-10-23T10:30:00.000000+00:00",
  message: "Server heartbeat - please respond with pong",
};

describe("ping -> pong", () => {
  test("answers a ping with {type: pong} at once, inside the message event", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const timersBefore = env.clock.seq;
    ws.receive(PING);
    // The pong is on the wire when receive() returns, and no timer was set for it: a hidden
    // tab with throttled timers answers just as fast.
    assert.deepEqual(ws.sent, ['{"type":"pong"}']);
    assert.equal(env.clock.seq, timersBefore);
  });

  test("emits ping (the frame) then pong (when it answered)", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const order = [];
    env.client.on("ping", (frame) => order.push(["ping", frame]));
    env.client.on("pong", (info) => order.push(["pong", info.time]));
    ws.receive(PING);
    assert.deepEqual(order, [
      ["ping", PING],
      ["pong", env.clock.now()],
    ]);
  });

  test("answers every ping", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    for (let i = 0; i < 5; i++) {
      await env.clock.advance(30_000);
      ws.receive(PING);
    }
    assert.equal(ws.sent.length, 5);
    assert.equal(env.named("pong").length, 5);
  });

  test("answerPings = false: the ping is reported but not answered", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    env.client.answerPings = false;
    ws.receive(PING);
    assert.deepEqual(ws.sent, []);
    assert.equal(env.named("ping").length, 1);
    assert.equal(env.named("pong").length, 0);
    env.client.answerPings = true;
    ws.receive(PING);
    assert.deepEqual(ws.sent, ['{"type":"pong"}']);
  });

  test("the answerPings option starts with pings unanswered", async () => {
    const env = setup({ client: { answerPings: false } });
    const ws = await env.connectOpen();
    ws.receive(PING);
    assert.equal(env.client.answerPings, false);
    assert.deepEqual(ws.sent, []);
  });

  test("message and onMessage handlers see every server frame, by type", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const all = [];
    const notifications = [];
    env.client.on("message", (f) => all.push(f.type));
    const off = env.client.onMessage("notification", (f) => notifications.push(f.data));
    ws.receive(PING);
    ws.receive({ type: "notification", data: { order_id: "12345" } });
    off();
    ws.receive({ type: "notification", data: { order_id: "67890" } });
    assert.deepEqual(all, ["ping", "notification", "notification"]);
    assert.deepEqual(notifications, [{ order_id: "12345" }]);
  });

  test("a frame that is not a JSON object is reported, not thrown", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    ws.receive("not json");
    ws.receive("[1,2]");
    assert.deepEqual(
      env.named("error").map((e) => e.code),
      ["invalid_frame", "invalid_frame"],
    );
    assert.equal(env.client.state, "connected");
  });
});
