// The client against the gateway's machine-readable protocol description
// (gateway/protocol/protocol.json): its exported tables, and its reaction to every close code
// the description lists, driven through a fake socket. tests/contract holds the same file to
// this module's text and to the .d.ts.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { CloseCode, DEFAULTS, ROOM_ERRORS, ServerFrameType } from "../presence-client.js";
import { flush, setup } from "../testing/fakes.js";

const description = JSON.parse(
  readFileSync(new URL("../../../gateway/protocol/protocol.json", import.meta.url), "utf8"),
);
const closeCodes = [...description.close_codes, ...description.client_close_codes];
const reconnect = description.client_reconnect;
/** The client's state after each action of the description. */
const STATES = { reconnect: "reconnecting", sign_out: "signed_out", auth_error: "auth_error", stop: "closed" };

/** The description's delay, in ms, for the first reconnect (attempt 0) with random() = 1. */
function expectedDelay(kind) {
  const backoff = Math.min(reconnect.max_seconds, reconnect.min_seconds) * 1000;
  return {
    backoff,
    rate_limited: reconnect.rate_limited_seconds * 1000 + backoff,
    restart_jitter: reconnect.restart_jitter_seconds * 1000,
    immediate: 0,
  }[kind];
}

describe("the exported tables are the description's", () => {
  test("CloseCode: every close code and alias, with its number", () => {
    const expected = {};
    for (const entry of closeCodes) {
      for (const name of [entry.name, ...(entry.aliases ?? [])]) expected[name] = entry.code;
    }
    assert.deepEqual({ ...CloseCode }, expected);
  });

  test("ServerFrameType: every server frame type", () => {
    assert.deepEqual(Object.values(ServerFrameType).sort(), Object.keys(description.server_frames).sort());
  });

  test("ROOM_ERRORS and the backoff defaults", () => {
    const rooms = Object.entries(description.error_codes).filter(([, e]) => e.room);
    assert.deepEqual([...ROOM_ERRORS].sort(), rooms.map(([code]) => code).sort());
    assert.deepEqual(
      { ...DEFAULTS.backoff },
      {
        min: reconnect.min_seconds * 1000,
        max: reconnect.max_seconds * 1000,
        rateLimited: reconnect.rate_limited_seconds * 1000,
        restartJitter: reconnect.restart_jitter_seconds * 1000,
        resetAfter: reconnect.reset_after_seconds * 1000,
      },
    );
  });
});

describe("the reaction to each close code is the description's", () => {
  for (const { code, name, client } of closeCodes) {
    test(`${code} ${name}: ${client.summary}`, async () => {
      const env = setup();
      const ws = await env.connectOpen();
      let rejection = null;
      env.client.send({ n: 1 }).catch((error) => {
        rejection = error;
      });
      assert.equal(env.client.unacked, 1);
      ws.serverClose(code, "closed by the test");
      await flush();
      assert.equal(env.client.state, STATES[client.action]);
      const [disconnected] = env.named("disconnected");
      assert.equal(disconnected.willReconnect, client.action === "reconnect");
      if (client.error_event) {
        assert.ok(env.named("error").some((e) => e.code === client.error_event));
      }
      if (client.action !== "reconnect") {
        assert.equal(rejection?.code, STATES[client.action], "pending sends fail with the state");
        assert.deepEqual(env.clock.pending(), [], "nothing scheduled: no reconnect");
        return;
      }
      assert.equal(disconnected.delay, expectedDelay(client.delay));
      if (client.resend_unacked) {
        assert.equal(rejection, null);
        assert.equal(env.client.buffered, 1, "the unacknowledged message is sent again");
      } else {
        assert.deepEqual([rejection?.code, rejection?.maybeDelivered], ["disconnected", true]);
      }
      await env.clock.advance(disconnected.delay);
      assert.equal(env.tokenCalls.at(-1).forceRefresh, Boolean(client.refresh_token));
      env.last().open();
      env.last().serverClose(code, "closed again");
      await flush();
      assert.equal(env.client.state, STATES[client.again ?? client.action]);
    });
  }
});
