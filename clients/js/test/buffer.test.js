import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { PresenceSendError } from "../presence-client.js";
import { flush, setup } from "../testing/fakes.js";

/** Acknowledge every message frame the socket has sent so far. */
function ackAll(ws) {
  for (const frame of ws.frames()) {
    if (frame.type === "message") ws.receive({ type: "ack", id: frame.id, timestamp: "t" });
  }
}

function settled(promise) {
  return promise.then(
    (value) => ({ ok: true, value }),
    (error) => ({ ok: false, error }),
  );
}

describe("send and acks", () => {
  test("sends {type: message, data, id} with increasing ids, resolved by the ack", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const a = env.client.send({ text: "hi" });
    const b = env.client.send("two");
    assert.deepEqual(ws.frames(), [
      { type: "message", data: { text: "hi" }, id: 1 },
      { type: "message", data: "two", id: 2 },
    ]);
    assert.equal(env.client.unacked, 2);
    ws.receive({ type: "ack", id: 2, timestamp: "t2" });
    ws.receive({ type: "ack", id: 1, timestamp: "t1" });
    assert.deepEqual(await a, { id: 1, timestamp: "t1" });
    assert.deepEqual(await b, { id: 2, timestamp: "t2" });
    assert.equal(env.client.unacked, 0);
  });

  test("send(undefined) sends data: null (the gateway requires the field)", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    env.client.send(undefined);
    assert.deepEqual(ws.frames(), [{ type: "message", data: null, id: 1 }]);
  });

  test("send never throws: bad data and oversized frames reject", async () => {
    const env = setup({ client: { maxMessageBytes: 100 } });
    await env.connectOpen();
    const cyclic = {};
    cyclic.self = cyclic;
    const bad = await settled(env.client.send(cyclic));
    assert.equal(bad.error.code, "invalid_data");
    const big = await settled(env.client.send("é".repeat(60)));
    assert.ok(big.error instanceof PresenceSendError);
    assert.equal(big.error.code, "message_too_large");
    assert.deepEqual(env.last().sent, []);
  });
});

describe("offline buffer", () => {
  test("send() before connect() and while disconnected is buffered, flushed in order", async () => {
    const env = setup();
    const early = env.client.send("a");
    assert.equal(env.client.buffered, 1);
    const ws1 = await env.connectOpen();
    assert.deepEqual(ws1.frames().map((f) => f.data), ["a"]);
    ackAll(ws1);
    assert.deepEqual(await early, { id: 1, timestamp: "t" });
    await env.clock.advance(20_000);
    ws1.serverClose(1006);
    const later = ["b", "c", "d"].map((d) => env.client.send(d));
    assert.equal(env.client.buffered, 3);
    assert.equal(env.client.state, "reconnecting");
    await env.clock.runNext();
    env.last().open();
    assert.deepEqual(env.last().frames().map((f) => [f.data, f.id]), [
      ["b", 2],
      ["c", 3],
      ["d", 4],
    ]);
    ackAll(env.last());
    assert.deepEqual((await Promise.all(later)).map((r) => r.id), [2, 3, 4]);
    assert.equal(env.client.buffered, 0);
  });

  test("overflow drops the oldest: overflow event and a rejected promise", async () => {
    const env = setup({ client: { bufferSize: 3 } });
    const sends = ["m1", "m2", "m3", "m4", "m5"].map((d) => settled(env.client.send(d)));
    assert.equal(env.client.buffered, 3);
    assert.deepEqual(env.named("overflow"), [
      { id: 1, data: "m1" },
      { id: 2, data: "m2" },
    ]);
    const ws = await env.connectOpen();
    assert.deepEqual(ws.frames().map((f) => f.data), ["m3", "m4", "m5"]);
    ackAll(ws);
    const results = await Promise.all(sends);
    assert.deepEqual(results.map((r) => r.ok), [false, false, true, true, true]);
    assert.equal(results[0].error.code, "overflow");
    assert.equal(results[0].error.data, "m1");
  });

  test("a clean close before the ack (1012, 4401, 4429...) resends the message first, same id", async () => {
    const env = setup();
    const ws1 = await env.connectOpen();
    const first = env.client.send("in flight");
    ws1.serverClose(1012, "");
    const second = env.client.send("queued");
    await env.clock.runNext();
    env.last().open();
    assert.deepEqual(env.last().frames(), [
      { type: "message", data: "in flight", id: 1 },
      { type: "message", data: "queued", id: 2 },
    ]);
    ackAll(env.last());
    assert.equal((await first).id, 1);
    assert.equal((await second).id, 2);
  });

  test("an abnormal close (1006) rejects unacknowledged sends as maybe delivered", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const sent = settled(env.client.send("lost?"));
    ws.serverClose(1006);
    const result = await sent;
    assert.equal(result.ok, false);
    assert.equal(result.error.code, "disconnected");
    assert.equal(result.error.maybeDelivered, true);
    await env.clock.runNext();
    env.last().open();
    assert.deepEqual(env.last().sent, [], "not resent: it may have been handled");
  });

  test("close() rejects buffered and unacknowledged sends", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const inflight = settled(env.client.send("x"));
    ws.readyState = 3; // as if the socket were already going
    const buffered = settled(env.client.send("y"));
    env.client.close();
    assert.deepEqual(
      (await Promise.all([inflight, buffered])).map((r) => r.error.code),
      ["closed", "closed"],
    );
    const after = await settled(env.client.send("z"));
    assert.equal(after.error.code, "closed");
  });

  test("a sign-out rejects what was waiting", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const pending = settled(env.client.send("x"));
    ws.receive({ type: "timeout", message: "bye" });
    const result = await pending;
    assert.equal(result.error.code, "signed_out");
    assert.equal((await settled(env.client.send("y"))).error.code, "signed_out");
  });

  test("an ignored rejected promise is not an unhandled rejection", async () => {
    const unhandled = [];
    const onUnhandled = (reason) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    const env = setup({ client: { bufferSize: 1 } });
    env.client.send("dropped");
    env.client.send("kept");
    env.client.close();
    await flush();
    await flush();
    process.removeListener("unhandledRejection", onUnhandled);
    assert.deepEqual(unhandled, []);
    assert.equal(env.named("overflow").length, 1);
  });

  test("the flush is paced under the gateway's rate limit (burst, then per second)", async () => {
    const env = setup({ client: { rateLimit: { perSecond: 10, burst: 20 } } });
    for (let i = 0; i < 50; i++) env.client.send(i);
    const ws = await env.connectOpen();
    const count = () => ws.frames().length;
    assert.equal(count(), 20);
    await env.clock.advance(100);
    assert.equal(count(), 21);
    await env.clock.advance(900);
    assert.equal(count(), 30);
    await env.clock.advance(2000);
    assert.equal(count(), 50);
    assert.deepEqual(ws.frames().map((f) => f.data), [...Array(50).keys()]);
  });

  test("rateLimit: null sends everything at once", async () => {
    const env = setup({ client: { rateLimit: null } });
    for (let i = 0; i < 100; i++) env.client.send(i);
    const ws = await env.connectOpen();
    assert.equal(ws.frames().length, 100);
  });
});
