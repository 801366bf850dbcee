import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { StreamPosition, socketUrl } from "../presence-client.js";
import { setup } from "../testing/fakes.js";

function stream(epoch, offset, n) {
  return { type: "stream", epoch, offset, data: { type: "note", n } };
}

function query(ws) {
  const params = Object.fromEntries(new URL(ws.url).searchParams);
  delete params.token;
  return params;
}

describe("durable streams", () => {
  test("the position drops duplicates and tolerates out-of-order offsets", () => {
    const position = new StreamPosition();
    assert.deepEqual(position.params(), { recover: "true" });
    assert.equal(position.accept("e1", 1), true);
    assert.equal(position.accept("e1", 1), false);
    assert.equal(position.accept("e1", 3), true);
    assert.equal(position.offset, 1);
    assert.equal(position.accept("e1", 2), true);
    assert.equal(position.offset, 3);
    assert.equal(position.accept("e1", 2), false);
    assert.equal(position.ackFrame(), '{"type":"stream_ack","epoch":"e1","offset":3}');
    assert.equal(position.ackFrame(), null);
    assert.deepEqual(position.params(), { recover: "true", epoch: "e1", offset: "3" });
  });

  test("a recovery result sets the position; an old epoch's frame is dropped", () => {
    const position = new StreamPosition();
    position.recovered("", 0, true);
    assert.equal(position.accept("e1", 1), true);
    position.recovered("e2", 40, false);
    assert.deepEqual([position.epoch, position.offset], ["e2", 40]);
    assert.equal(position.accept("e2", 40), false);
    assert.equal(position.accept("e2", 41), true);
    assert.equal(position.accept("e1", 99), false);
  });

  test("an unavailable recovery keeps what was seen, so a later replay is not repeated", () => {
    const position = new StreamPosition();
    position.recovered("", 0, true);
    assert.equal(position.accept("e1", 1), true);
    assert.equal(position.accept("e1", 3), true);
    assert.equal(position.accept("e1", 4), true);
    position.recovered("e1", 1, false);
    assert.deepEqual([position.epoch, position.offset, [...position.seen]], ["e1", 1, [3, 4]]);
    assert.equal(position.accept("e1", 2), true);
    assert.equal(position.accept("e1", 3), false);
    assert.equal(position.accept("e1", 4), false);
    assert.equal(position.offset, 4);
    position.recovered("e1", 2, false);
    assert.equal(position.offset, 4);
  });

  test("the URL carries the token, then the position", () => {
    assert.equal(
      socketUrl("https://h:1", "u", "tok", { recover: "true", epoch: "", offset: "0" }),
      "wss://h:1/ws/connect/u?token=tok&recover=true&epoch=&offset=0",
    );
  });

  test("frames are delivered once, acknowledged, and the position is presented on reconnect", async () => {
    const env = setup({ client: { recover: true, ackInterval: 100 } });
    const streamed = [];
    const recoveries = [];
    const lost = [];
    const notes = [];
    env.client.on("stream", (e) => streamed.push(e));
    env.client.on("recovery", (e) => recoveries.push(e));
    env.client.on("notRecovered", (e) => lost.push(e));
    env.client.onMessage("note", (data) => notes.push(data.n));
    const first = await env.connectOpen();
    assert.deepEqual(query(first), { recover: "true" });
    first.receive({ type: "recovery", recovered: true, epoch: "", offset: 0, missed: 0, timestamp: "t" });
    for (const offset of [1, 2, 1]) first.receive(stream("e1", offset, offset));
    assert.deepEqual(notes, [1, 2]);
    assert.deepEqual(
      streamed.map((e) => e.offset),
      [1, 2],
    );
    assert.deepEqual(first.frames(), []);
    await env.clock.advance(100);
    assert.deepEqual(first.frames(), [{ type: "stream_ack", epoch: "e1", offset: 2 }]);
    first.serverClose(1012);
    await env.clock.advance(5000);
    const second = env.last();
    assert.notEqual(second, first);
    assert.deepEqual(query(second), { recover: "true", epoch: "e1", offset: "2" });
    second.open();
    second.receive({
      type: "recovery",
      recovered: false,
      epoch: "e2",
      offset: 9,
      missed: 0,
      reason: "epoch_changed",
      timestamp: "t",
    });
    const refused = { recovered: false, epoch: "e2", offset: 9, missed: 0, reason: "epoch_changed" };
    assert.deepEqual(lost, [refused]);
    assert.deepEqual(recoveries.at(-1), refused);
    assert.deepEqual([env.client.streamPosition.epoch, env.client.streamPosition.offset], ["e2", 9]);
  });

  test("without recover the URL asks for nothing", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    assert.deepEqual(query(ws), {});
  });
});
