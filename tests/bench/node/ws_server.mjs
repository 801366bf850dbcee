// The reference the gateway's CPU and memory are measured against (make bench, `node`
// scenario): Node's `ws` doing the same JSON ping/pong as the gateway, with nothing persisted.
//
//   node tests/bench/node/ws_server.mjs --port 9000 --interval 1
//
// Every socket is pinged with the gateway's ping frame every --interval seconds (one JSON
// encoding per round, as a production ws server would), and every text frame is parsed as JSON
// and counted as a pong when it is one. Prints {"event":"ready","port":N} once listening, and
// {"event":"stats",...} for each "stats" line on stdin; runs a full garbage collection for each
// "gc" line when started with --expose-gc ({"event":"gc","collected":true}); exits on EOF or
// "stop".
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { WebSocketServer } from "ws";

const { values: args } = parseArgs({
  options: { port: { type: "string", default: "9000" }, interval: { type: "string", default: "30" } },
});
const port = Number(args.port);
const interval = Number(args.interval) * 1000;

let pings = 0;
let pongs = 0;
let other = 0;
const server = new WebSocketServer({
  port,
  host: "0.0.0.0",
  perMessageDeflate: false,
  maxPayload: 4096,
  clientTracking: true,
});
server.on("connection", (socket) => {
  socket.on("message", (data, isBinary) => {
    if (isBinary) return;
    let message;
    try {
      message = JSON.parse(data.toString());
    } catch {
      other += 1;
      return;
    }
    if (message && message.type === "pong") pongs += 1;
    else other += 1;
  });
  socket.on("error", () => {});
});

setInterval(() => {
  const frame = JSON.stringify({
    type: "ping",
    timestamp: new Date().toISOString(),
    message: "Connection alive check",
  });
  for (const socket of server.clients) {
    if (socket.readyState === 1) {
      socket.send(frame);
      pings += 1;
    }
  }
}, interval);

server.on("listening", () => {
  process.stdout.write(`${JSON.stringify({ event: "ready", port })}\n`);
});

const emitStats = () => {
  const { heapUsed, rss } = process.memoryUsage();
  process.stdout.write(
    `${JSON.stringify({ event: "stats", connections: server.clients.size, pings, pongs, other, rss_kb: rss / 1024, heap_kb: heapUsed / 1024 })}\n`,
  );
};
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (line.trim() === "stats") emitStats();
  else if (line.trim() === "gc") {
    // The memory series' readings (tests/bench/memory_series.py): a full collection first, so
    // V8's heap growing and shrinking between collections does not show as a cost per socket.
    if (globalThis.gc) globalThis.gc();
    process.stdout.write(`${JSON.stringify({ event: "gc", collected: Boolean(globalThis.gc) })}\n`);
  } else if (line.trim() === "stop") process.exit(0);
});
lines.on("close", () => process.exit(0));
