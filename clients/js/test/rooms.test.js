import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { PresenceRoomError } from "../presence-client.js";
import { flush, setup } from "../testing/fakes.js";

function settled(promise) {
  return promise.then(
    (value) => ({ ok: true, value }),
    (error) => ({ ok: false, error }),
  );
}

describe("rooms", () => {
  test("join sends {type: join, room} and resolves on the gateway's joined", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const joined = env.client.join("team-42");
    assert.deepEqual(ws.frames(), [{ type: "join", room: "team-42" }]);
    ws.receive({ type: "joined", room: "team-42", timestamp: "t" });
    assert.deepEqual(await joined, { room: "team-42", timestamp: "t" });
    assert.deepEqual(env.client.rooms, ["team-42"]);
  });

  test("a refused join rejects with the gateway's code and is not asked again", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const refused = settled(env.client.join("secret"));
    ws.receive({
      type: "error",
      code: "room_forbidden",
      message: "This token does not allow joining room 'secret'",
      timestamp: "t",
      room: "secret",
    });
    const { error } = await refused;
    assert.ok(error instanceof PresenceRoomError);
    assert.deepEqual([error.code, error.room], ["room_forbidden", "secret"]);
    assert.deepEqual(env.client.rooms, []);
    assert.equal(env.named("error").at(-1).code, "room_forbidden");
  });

  test("joins made offline are sent on connect; rooms are joined again after a reconnect", async () => {
    const env = setup();
    const early = env.client.join("b");
    env.client.join("a");
    const ws1 = await env.connectOpen();
    assert.deepEqual(ws1.frames(), [
      { type: "join", room: "a" },
      { type: "join", room: "b" },
    ]);
    ws1.receive({ type: "joined", room: "b", timestamp: "t1" });
    assert.deepEqual(await early, { room: "b", timestamp: "t1" });
    await env.clock.advance(20_000);
    ws1.serverClose(1006);
    await env.clock.runNext();
    await flush();
    env.last().open();
    assert.deepEqual(env.last().frames(), [
      { type: "join", room: "a" },
      { type: "join", room: "b" },
    ]);
  });

  test("joins go out before buffered messages and count against the rate limit", async () => {
    const env = setup({ client: { rateLimit: { perSecond: 1, burst: 2 } } });
    env.client.send("m");
    env.client.join("a");
    env.client.join("b");
    const ws = await env.connectOpen();
    assert.deepEqual(ws.frames(), [
      { type: "join", room: "a" },
      { type: "join", room: "b" },
    ]);
    await env.clock.advance(1_000);
    assert.deepEqual(ws.frames().at(-1), { type: "message", data: "m", id: 1 });
  });

  test("leave sends {type: leave, room}, resolves on left, and the room is not rejoined", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    env.client.join("a");
    ws.receive({ type: "joined", room: "a", timestamp: "t" });
    const left = env.client.leave("a");
    assert.deepEqual(ws.frames().at(-1), { type: "leave", room: "a" });
    ws.receive({ type: "left", room: "a", timestamp: "t" });
    assert.deepEqual(await left, { room: "a" });
    assert.deepEqual(env.client.rooms, []);
    const offline = setup();
    assert.deepEqual(await offline.client.leave("x"), { room: "x" });
  });

  test("an unasked left (the refreshed token lost the room) drops it and emits left", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    const lefts = [];
    env.client.on("left", (e) => lefts.push(e));
    env.client.join("a");
    ws.receive({ type: "joined", room: "a", timestamp: "t" });
    ws.receive({ type: "left", room: "a", timestamp: "t", reason: "not_allowed" });
    assert.deepEqual(lefts, [{ room: "a", reason: "not_allowed" }]);
    assert.deepEqual(env.client.rooms, []);
  });

  test("pending joins reject when the client stops; join after close rejects at once", async () => {
    const env = setup();
    await env.connectOpen();
    const pending = settled(env.client.join("a"));
    env.client.close();
    const { error } = await pending;
    assert.deepEqual([error.code, error.room], ["closed", "a"]);
    const late = await settled(env.client.join("b"));
    assert.equal(late.error.code, "closed");
  });
});
