import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { backoffDelay } from "../presence-client.js";
import { flush, setup } from "../testing/fakes.js";

/** Drop the current socket without a close frame and return the announced reconnect delay. */
async function dropAndDelay(env, code = 1006) {
  env.last().serverClose(code);
  const [info] = env.named("disconnected").slice(-1);
  return info.delay;
}

describe("backoffDelay", () => {
  test("doubles from 0.5 s and caps at 20 s (random() = 1)", () => {
    const schedule = [0, 1, 2, 3, 4, 5, 6, 7, 10].map((n) => backoffDelay(n, undefined, () => 1));
    assert.deepEqual(schedule, [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000]);
  });

  test("full jitter: the delay is random() times the cap", () => {
    assert.equal(backoffDelay(3, { min: 500, max: 20000 }, () => 0.25), 1000);
    assert.equal(backoffDelay(3, { min: 500, max: 20000 }, () => 0), 0);
    assert.equal(backoffDelay(9, { min: 500, max: 20000 }, () => 0.5), 10000);
  });

  test("honours custom bounds", () => {
    assert.deepEqual(
      [0, 1, 2, 3].map((n) => backoffDelay(n, { min: 100, max: 350 }, () => 1)),
      [100, 200, 350, 350],
    );
  });
});

describe("reconnect schedule", () => {
  test("consecutive failed connections follow the jittered exponential schedule", async () => {
    const randoms = [0.5, 0.25, 1, 0.1, 0.9, 1, 1, 0.5];
    let i = 0;
    const env = setup({ client: { random: () => randoms[i++] } });
    const { client, clock } = env;
    client.connect();
    await flush();
    const delays = [];
    for (let n = 0; n < randoms.length; n++) {
      delays.push(await dropAndDelay(env));
      assert.equal(client.state, "reconnecting");
      assert.deepEqual(clock.pending(), [delays[n]]);
      await clock.runNext();
      assert.equal(client.state, "connecting");
    }
    assert.deepEqual(delays, [
      0.5 * 500,
      0.25 * 1000,
      1 * 2000,
      0.1 * 4000,
      0.9 * 8000,
      1 * 16000,
      1 * 20000,
      0.5 * 20000,
    ]);
  });

  test("a socket that opens and is closed at once does not reset the backoff", async () => {
    const env = setup();
    const { client, clock, last } = env;
    client.connect();
    await flush();
    const delays = [];
    for (let n = 0; n < 4; n++) {
      last().open();
      await clock.advance(100);
      delays.push(await dropAndDelay(env));
      await clock.runNext();
    }
    assert.deepEqual(delays, [500, 1000, 2000, 4000]);
  });

  test("a connection that stayed up 10 s resets the backoff", async () => {
    const env = setup();
    const { client, clock, last } = env;
    client.connect();
    await flush();
    for (let n = 0; n < 3; n++) {
      await dropAndDelay(env);
      await clock.runNext();
    }
    last().open();
    await clock.advance(10_000);
    assert.equal(await dropAndDelay(env), 500);
  });

  test("a ping resets the backoff at once", async () => {
    const env = setup();
    const { client, clock, last } = env;
    client.connect();
    await flush();
    for (let n = 0; n < 3; n++) {
      await dropAndDelay(env);
      await clock.runNext();
    }
    last().open();
    last().receive({ type: "ping", timestamp: "t" });
    assert.equal(await dropAndDelay(env), 500);
  });

  test("the reconnect waits for its timer: no socket is opened before the delay", async () => {
    const env = setup();
    const { client, clock, sockets } = env;
    await env.connectOpen();
    await clock.advance(20_000);
    env.last().serverClose(1006);
    assert.equal(sockets.length, 1);
    await clock.advance(499);
    assert.equal(sockets.length, 1);
    await clock.advance(1);
    assert.equal(sockets.length, 2);
    assert.equal(client.state, "connecting");
  });
});
