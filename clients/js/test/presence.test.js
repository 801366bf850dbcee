import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { PresenceSendError } from "../presence-client.js";
import { flush, setup } from "../testing/fakes.js";

const ANA = { user_id: "ana", devices: 1, info: { name: "Ana" } };
const BEN = { user_id: "ben", devices: 1, info: { name: "Ben" } };

function settled(promise) {
  return promise.then(
    (value) => ({ ok: true, value }),
    (error) => ({ ok: false, error }),
  );
}

/** The client's presence events, in order. */
function recordPresence(client) {
  const seen = [];
  for (const name of ["presence", "presenceDiff", "presenceChange", "publish"]) {
    client.on(name, (payload) => seen.push({ name, payload }));
  }
  const named = (name) => seen.filter((e) => e.name === name).map((e) => e.payload);
  return { seen, named };
}

async function joinedRoom(env, room = "doc:7", options = undefined) {
  const ws = await env.connectOpen();
  env.client.join(room, options);
  ws.receive({ type: "joined", room, timestamp: "t" });
  return ws;
}

function snapshot(room, members) {
  return { type: "presence", room, members, users: members.length, connections: members.length, timestamp: "t" };
}

describe("room presence", () => {
  test("join sends info in the join frame, and every rejoin after a reconnect sends it again", async () => {
    const env = setup();
    env.client.join("doc:7", { info: { name: "Ana", color: "#e33" } });
    env.client.join("team");
    const ws1 = await env.connectOpen();
    const expected = [
      { type: "join", room: "doc:7", info: { name: "Ana", color: "#e33" } },
      { type: "join", room: "team" },
    ];
    assert.deepEqual(ws1.frames(), expected);
    await env.clock.advance(20_000);
    ws1.serverClose(1006);
    await env.clock.runNext();
    await flush();
    env.last().open();
    assert.deepEqual(env.last().frames(), expected);
  });

  test("an info that is not a JSON object rejects the join with invalid_info and sends nothing", async () => {
    const env = setup();
    const ws = await env.connectOpen();
    for (const info of [null, [1], "Ana"]) {
      const { error } = await settled(env.client.join("doc:7", { info }));
      assert.deepEqual([error.code, error.room], ["invalid_info", "doc:7"]);
    }
    assert.deepEqual(ws.frames(), []);
    assert.deepEqual(env.client.rooms, []);
  });

  test("the snapshot sets the member list and emits presence then presenceChange", async () => {
    const env = setup();
    const { seen } = recordPresence(env.client);
    const ws = await joinedRoom(env);
    ws.receive(snapshot("doc:7", [ANA, BEN]));
    assert.deepEqual(env.client.members("doc:7"), [ANA, BEN]);
    assert.deepEqual(seen, [
      {
        name: "presence",
        payload: { room: "doc:7", members: [ANA, BEN], users: 2, connections: 2, timestamp: "t" },
      },
      { name: "presenceChange", payload: { room: "doc:7", members: [ANA, BEN] } },
    ]);
  });

  test("a diff upserts its joins by user and removes its leaves; a new snapshot replaces the list", async () => {
    const env = setup();
    const { named } = recordPresence(env.client);
    const ws = await joinedRoom(env);
    ws.receive(snapshot("doc:7", [ANA, BEN]));
    const cy = { user_id: "cy", devices: 1, info: {} };
    const anaTwice = { ...ANA, devices: 2 };
    ws.receive({
      type: "presence_diff",
      room: "doc:7",
      joins: [anaTwice, cy],
      leaves: [{ user_id: "ben" }],
      users: 2,
      connections: 3,
      timestamp: "t2",
    });
    assert.deepEqual(env.client.members("doc:7"), [anaTwice, cy]);
    assert.deepEqual(named("presenceDiff"), [
      { room: "doc:7", joins: [anaTwice, cy], leaves: [{ user_id: "ben" }], users: 2, connections: 3, timestamp: "t2" },
    ]);
    assert.deepEqual(named("presenceChange").at(-1), { room: "doc:7", members: [anaTwice, cy] });
    ws.receive(snapshot("doc:7", [BEN]));
    assert.deepEqual(env.client.members("doc:7"), [BEN]);
  });

  test("members() hands out copies: changing them does not change the client's list", async () => {
    const env = setup();
    const ws = await joinedRoom(env);
    ws.receive(snapshot("doc:7", [ANA]));
    env.client.members("doc:7")[0].devices = 9;
    assert.deepEqual(env.client.members("doc:7"), [ANA]);
    assert.deepEqual(env.client.members("elsewhere"), []);
  });

  test("the list is dropped on leave (presenceChange with no members) and a late snapshot keeps none", async () => {
    const env = setup();
    const { named } = recordPresence(env.client);
    const ws = await joinedRoom(env);
    ws.receive(snapshot("doc:7", [ANA]));
    env.client.leave("doc:7");
    assert.deepEqual(env.client.members("doc:7"), []);
    assert.deepEqual(named("presenceChange").at(-1), { room: "doc:7", members: [] });
    ws.receive(snapshot("doc:7", [ANA]));
    ws.receive({ type: "presence_diff", room: "doc:7", joins: [BEN], leaves: [], users: 2, connections: 2 });
    assert.deepEqual(env.client.members("doc:7"), []);
    assert.equal(named("presenceChange").length, 2);
  });

  test("an unasked left (not_allowed) drops the room's list", async () => {
    const env = setup();
    const ws = await joinedRoom(env);
    ws.receive(snapshot("doc:7", [ANA]));
    ws.receive({ type: "left", room: "doc:7", reason: "not_allowed", timestamp: "t" });
    assert.deepEqual(env.client.members("doc:7"), []);
  });

  test("a disconnect drops every list; the snapshot after the rejoin rebuilds it", async () => {
    const env = setup();
    const { named } = recordPresence(env.client);
    const ws1 = await joinedRoom(env);
    ws1.receive(snapshot("doc:7", [ANA, BEN]));
    await env.clock.advance(20_000);
    ws1.serverClose(1006);
    assert.deepEqual(env.client.members("doc:7"), []);
    assert.deepEqual(named("presenceChange").at(-1), { room: "doc:7", members: [] });
    await env.clock.runNext();
    await flush();
    env.last().open();
    env.last().receive({ type: "joined", room: "doc:7", timestamp: "t" });
    env.last().receive(snapshot("doc:7", [ANA]));
    assert.deepEqual(env.client.members("doc:7"), [ANA]);
  });

  test("close() drops every list", async () => {
    const env = setup();
    const ws = await joinedRoom(env);
    ws.receive(snapshot("doc:7", [ANA]));
    env.client.close();
    assert.deepEqual(env.client.members("doc:7"), []);
  });

  test("malformed members are skipped; a presence frame without members is a protocol error", async () => {
    const env = setup();
    const ws = await joinedRoom(env);
    ws.receive(snapshot("doc:7", [ANA, { devices: 1 }, "ben", { user_id: "cy" }]));
    assert.deepEqual(env.client.members("doc:7"), [ANA, { user_id: "cy", devices: 1, info: {} }]);
    ws.receive({ type: "presence", room: "doc:7" });
    assert.equal(env.named("error").at(-1).code, "invalid_frame");
    assert.equal(env.client.members("doc:7").length, 2);
  });
});

describe("publish", () => {
  test("publish sends {type: publish, room, data} on the live socket and returns true", async () => {
    const env = setup();
    const ws = await joinedRoom(env);
    assert.equal(env.client.publish("doc:7", { typing: true }), true);
    assert.deepEqual(ws.frames().at(-1), { type: "publish", room: "doc:7", data: { typing: true } });
  });

  test("offline or outside the room, publish returns false and nothing is sent later", async () => {
    const env = setup();
    env.client.join("doc:7");
    assert.equal(env.client.publish("doc:7", { typing: true }), false);
    const ws = await env.connectOpen();
    assert.equal(env.client.publish("other", { typing: true }), false);
    assert.deepEqual(ws.frames(), [{ type: "join", room: "doc:7" }]);
  });

  test("a publish paced by the rate limit is dropped with its socket, never replayed", async () => {
    const env = setup({ client: { rateLimit: { perSecond: 1, burst: 1 } } });
    const ws1 = await joinedRoom(env);
    assert.equal(env.client.publish("doc:7", { typing: true }), true);
    assert.deepEqual(ws1.frames(), [{ type: "join", room: "doc:7" }]);
    ws1.serverClose(1006);
    await env.clock.advance(30_000);
    env.last().open();
    await env.clock.advance(5_000);
    assert.deepEqual(env.last().frames(), [{ type: "join", room: "doc:7" }]);
  });

  test("data that is not JSON or too large throws a PresenceSendError", async () => {
    const env = setup({ client: { maxMessageBytes: 100 } });
    await joinedRoom(env);
    const cyclic = {};
    cyclic.self = cyclic;
    assert.throws(() => env.client.publish("doc:7", cyclic), (e) => e instanceof PresenceSendError && e.code === "invalid_data");
    assert.throws(
      () => env.client.publish("doc:7", "x".repeat(200)),
      (e) => e instanceof PresenceSendError && e.code === "message_too_large",
    );
  });

  test("a refused publish is an error event and keeps the room; the gateway's invalid_info refuses the join", async () => {
    const env = setup();
    const ws = await joinedRoom(env);
    ws.receive({ type: "error", code: "publish_forbidden", message: "no", room: "doc:7", timestamp: "t" });
    assert.equal(env.named("error").at(-1).code, "publish_forbidden");
    assert.deepEqual(env.client.rooms, ["doc:7"]);
    const big = settled(env.client.join("doc:8", { info: { name: "x".repeat(300) } }));
    ws.receive({ type: "error", code: "invalid_info", message: "too big", room: "doc:8", timestamp: "t" });
    const { error } = await big;
    assert.deepEqual([error.code, error.room], ["invalid_info", "doc:8"]);
    assert.deepEqual(env.client.rooms, ["doc:7"]);
  });

  test("an incoming publish frame is emitted as publish {room, from, data, timestamp}", async () => {
    const env = setup();
    const { named } = recordPresence(env.client);
    const ws = await joinedRoom(env);
    ws.receive({ type: "publish", room: "doc:7", from: "ben", data: { typing: true }, timestamp: "t" });
    assert.deepEqual(named("publish"), [{ room: "doc:7", from: "ben", data: { typing: true }, timestamp: "t" }]);
  });
});
