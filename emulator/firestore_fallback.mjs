#!/usr/bin/env node
// Fallback Firestore emulator for machines without the Google Cloud SDK.
//
// Serves @firestore-emulator/server (MIT, an independent in-memory gRPC implementation of the
// Firestore v1 API; not Google's emulator) on --host/--port, and on the same port answers plain
// HTTP/1.1 like the official emulator does for the bits we use:
//   GET /                                                      -> 200 "Ok"  (readiness probe)
//   DELETE /emulator/v1/projects/{p}/databases/{db}/documents  -> 200 "{}"  (drop that data)
// Each accepted connection is sniffed: one that opens with the HTTP/2 client preface goes to the
// gRPC server (through grpc-js' connection injector), any other one to a small HTTP/1.1 server.
//
// It also corrects, at run time, what the package (0.3.x) gets wrong or lacks for the Python
// client: a set without merge replaces the document; fields named in an update mask but absent
// from the data (DELETE_FIELD) are deleted; a commit is all-or-nothing; every field transform
// of a write is applied; queries order as Firestore does (orderBy, implicit inequality order,
// then document id; documents missing an orderBy field left out) and honour cursors and
// offset; read-write transactions get optimistic concurrency control (a commit whose
// transaction read a document that changed since aborts with ABORTED, and the client
// retries); and query features it would silently ignore (unary filters, document-id or
// nested-field paths, collection groups) fail with a clear error instead of wrong results.
//
// Usage: node firestore_fallback.mjs --host 127.0.0.1 --port 8080

import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import http from "node:http";
import net from "node:net";
import { parseArgs } from "node:util";

import {
  FirestoreServer,
  FirestoreState,
  FirestoreStateCollection,
  FirestoreStateDocument,
} from "@firestore-emulator/server";

const require = createRequire(import.meta.url);
const serverEntry = require.resolve("@firestore-emulator/server");
// grpc-js as the server package itself loads it: ServerCredentials must come from that copy.
const grpc = createRequire(serverEntry)("@grpc/grpc-js");
const { version } = require("@firestore-emulator/server/package.json");
const proto = (name) =>
  createRequire(serverEntry)(`@firestore-emulator/proto/dist/google/firestore/v1/${name}`);
const { Write } = proto("write");
const { Value } = proto("document");
const { StructuredQuery } = proto("query");
const { BeginTransactionResponse } = proto("firestore");

const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const RESET_PATH = /^\/emulator\/v1\/projects\/([^/]+)\/databases\/([^/]+)\/documents\/?$/;

const { values: args } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "8080" },
  },
});
const host = args.host;
const port = Number.parseInt(args.port, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`firestore_fallback: invalid --port ${args.port}`);
  process.exit(2);
}

// ---- Corrections to the package's semantics (see the header) --------------------------------

/** A Firestore field path ("a.b", "`x.y`.z") as its segments. */
function parseFieldPath(path) {
  const segments = [];
  let current = "";
  let quoted = false;
  for (let i = 0; i < path.length; i++) {
    const ch = path[i];
    if (quoted && ch === "\\" && i + 1 < path.length) {
      current += path[++i];
    } else if (ch === "`") {
      quoted = !quoted;
    } else if (ch === "." && !quoted) {
      segments.push(current);
      current = "";
    } else {
      current += ch;
    }
  }
  segments.push(current);
  return segments;
}

/** Whether the write's data (a Map of protobuf Values) holds a value at ``segments``. */
function hasValueAt(fields, segments) {
  let map = fields;
  for (let i = 0; i < segments.length; i++) {
    const value = map.get(segments[i]);
    if (value === undefined) return false;
    if (i === segments.length - 1) return true;
    if (!value.has_map_value) return false;
    map = value.map_value.fields;
  }
  return false;
}

/** A copy of a document's (frozen) field record without the field at ``segments``. */
function withoutPath(fields, segments) {
  const [head, ...rest] = segments;
  if (!(head in fields)) return fields;
  const { [head]: field, ...others } = fields;
  if (rest.length === 0) return others;
  if (field.type !== "map_value") return fields;
  return { ...others, [head]: new field.constructor(withoutPath(field.value, rest)) };
}

/** How many writes each document has had: what optimistic transactions compare. */
const versions = new WeakMap();
const versionOf = (document) => versions.get(document) ?? 0;

const writeV1Document = FirestoreState.prototype.writeV1Document;
FirestoreState.prototype.writeV1Document = function (date, write) {
  if (!write.has_update) {
    const result = writeV1Document.call(this, date, write);
    if (write.has_delete) {
      const document = this.getDocument(write.delete);
      versions.set(document, versionOf(document) + 1);
    }
    return result;
  }
  const document = this.getDocument(write.update.name);
  if (!write.has_update_mask && document.metadata.hasExist) {
    document.fields = {}; // without a mask the data replaces the document (Commit rolls back)
  }
  const result = writeV1Document.call(this, date, write);
  versions.set(document, versionOf(document) + 1);
  if (write.has_update_mask) {
    const transformed = new Set(write.update_transforms.map((t) => t.field_path));
    for (const path of write.update_mask.field_paths) {
      const segments = parseFieldPath(path);
      if (!transformed.has(path) && !hasValueAt(write.update.fields, segments)) {
        document.fields = withoutPath(document.fields, segments);
      }
    }
  }
  return result;
};

// The package's converter from protobuf values to its field objects is not exported: a write
// to a scratch document stands in for it.
const scratchName = "projects/p/databases/d/documents/c/d";
const scratch = new FirestoreState();

/** The package's field object for a protobuf Value. */
function toField(value) {
  const write = Write.fromObject({ update: { name: scratchName } });
  write.update.fields.set("v", value);
  scratch.writeV1Document(new Date(), write);
  return scratch.getDocument(scratchName).getField("v");
}

const ArrayField = toField(Value.fromObject({ array_value: { values: [] } })).constructor;

const NUMERIC = new Set(["integer_value", "double_value"]);

// Integers and doubles compare with each other by value, as in Firestore (the package's
// comparisons need both sides of the same class, so `v > 2` missed v == 3.5).
const IntegerField = toField(Value.fromObject({ integer_value: 0 })).constructor;
const DoubleField = toField(Value.fromObject({ double_value: 0.5 })).constructor;
const isNumber = (field) => field instanceof IntegerField || field instanceof DoubleField;
for (const cls of [IntegerField, DoubleField]) {
  Object.assign(cls.prototype, {
    eq(other) {
      return isNumber(other) && this.value === other.value;
    },
    lt(other) {
      return isNumber(other) && this.value < other.value;
    },
    lte(other) {
      return isNumber(other) && this.value <= other.value;
    },
    gt(other) {
      return isNumber(other) && this.value > other.value;
    },
    gte(other) {
      return isNumber(other) && this.value >= other.value;
    },
  });
}

// The package returns after a server-timestamp or array transform: apply them one by one. An
// array union/remove on a missing or non-array field starts from an empty array, as Firestore.
const v1Transform = FirestoreStateDocument.prototype.v1Transform;
FirestoreStateDocument.prototype.v1Transform = function (date, transforms) {
  for (const transform of transforms) {
    const isArrayOp = transform.has_append_missing_elements || transform.has_remove_all_from_array;
    const type = this.getField(transform.field_path)?.type;
    if (isArrayOp && type !== "array_value") {
      this.set(date, { [transform.field_path]: new ArrayField([]) });
    }
    // An increment of a non-number sets the operand, as Firestore (the package throws).
    if (transform.has_increment && type !== undefined && !NUMERIC.has(type)) {
      this.fields = withoutPath(this.fields, [transform.field_path]);
    }
    v1Transform.call(this, date, [transform]);
  }
};

// Firestore's order of value types; numbers compare across integer and double.
const TYPE_ORDER = {
  null_value: 0,
  boolean_value: 1,
  integer_value: 2,
  double_value: 2,
  timestamp_value: 3,
  string_value: 4,
  bytes_value: 5,
  reference_value: 6,
  geo_point_value: 7,
  array_value: 8,
  map_value: 9,
};

function compareFields(a, b) {
  const ta = TYPE_ORDER[a.type] ?? 10;
  const tb = TYPE_ORDER[b.type] ?? 10;
  if (ta !== tb) return ta - tb;
  if (ta === 2) return a.value < b.value ? -1 : a.value > b.value ? 1 : 0;
  if (a.eq(b)) return 0;
  return a.lt(b) ? -1 : b.lt(a) ? 1 : 0;
}

const compareStrings = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
const NAME = "__name__";
const DESCENDING = 2; // StructuredQuery.Direction
const INEQUALITY_OPS = new Set([1, 2, 3, 4, 6, 10]); // <, <=, >, >=, !=, not-in

function unsupported(what) {
  return new Error(`${what} is not supported by the fallback Firestore emulator`);
}

function checkFieldPath(path) {
  if (path === NAME) throw unsupported("filtering on the document id (__name__)");
  if (path.includes(".") || path.includes("`")) {
    throw unsupported(`the nested or quoted field path ${JSON.stringify(path)}`);
  }
}

/** Check the filter; collect the fields it compares with an inequality. */
function checkFilter(filter, nested, inequalities) {
  if (filter.has_unary_filter) throw unsupported("a unary filter (== None / == NaN)");
  if (filter.has_field_filter) {
    const { field, op } = filter.field_filter;
    checkFieldPath(field.field_path);
    if (INEQUALITY_OPS.has(op)) inequalities.add(field.field_path);
  }
  if (filter.has_composite_filter) {
    for (const inner of filter.composite_filter.filters) {
      if (nested && inner.has_composite_filter) throw unsupported("a nested composite filter");
      checkFilter(inner, true, inequalities);
    }
  }
  return inequalities;
}

/** The reads of the transaction a RunQuery runs in, set while it runs (synchronously). */
let queryReads = null;

// The package filters; ordering, cursors, offset and limit are done here instead.
const v1Query = FirestoreState.prototype.v1Query;
FirestoreState.prototype.v1Query = function (parent, query) {
  if (query.from.some((selector) => selector.all_descendants)) {
    throw unsupported("a collection-group query");
  }
  const inequalities = query.has_where ? checkFilter(query.where, false, new Set()) : new Set();
  const orders = query.order_by.map(({ field, direction }) => ({
    path: field.field_path,
    desc: direction === DESCENDING,
  }));
  for (const { path } of orders) if (path !== NAME) checkFieldPath(path);
  if (orders.length === 0) {
    for (const path of [...inequalities].sort()) orders.push({ path, desc: false });
  }
  if (orders.at(-1)?.path !== NAME) {
    orders.push({ path: NAME, desc: orders.at(-1)?.desc ?? false });
  }
  // A copy through the wire format (toObject() loses which oneof member is set).
  const filterOnly = StructuredQuery.deserializeBinary(query.serializeBinary());
  filterOnly.order_by = [];
  filterOnly.start_at = undefined;
  filterOnly.end_at = undefined;
  filterOnly.offset = 0;
  filterOnly.limit = undefined;
  const key = (document, order) =>
    order.path === NAME ? document.getPath() : document.getField(order.path);
  const compareAt = (order, x, y) =>
    order.path === NAME ? compareStrings(x, y) : compareFields(x, y);
  const compare = (a, b) => {
    for (const order of orders) {
      const c = compareAt(order, key(a, order), key(b, order));
      if (c !== 0) return order.desc ? -c : c;
    }
    return 0;
  };
  let docs = v1Query
    .call(this, parent, filterOnly)
    .filter((d) => orders.every((o) => o.path === NAME || d.getField(o.path) !== undefined))
    .sort(compare);

  const cursorTest = (cursor, keep) => {
    const bounds = cursor.values.slice(0, orders.length).map((value, i) => ({
      order: orders[i],
      value: orders[i].path === NAME ? value.reference_value : toField(value),
    }));
    return (document) => {
      for (const { order, value } of bounds) {
        const c = compareAt(order, key(document, order), value);
        if (c !== 0) return keep(order.desc ? -c : c);
      }
      return keep(0);
    };
  };
  if (query.has_start_at) {
    const { before } = query.start_at; // start_at: >=, start_after: >
    docs = docs.filter(cursorTest(query.start_at, (c) => (before ? c >= 0 : c > 0)));
  }
  if (query.has_end_at) {
    const { before } = query.end_at; // end_before: <, end_at: <=
    docs = docs.filter(cursorTest(query.end_at, (c) => (before ? c < 0 : c <= 0)));
  }
  if (query.offset) docs = docs.slice(query.offset);
  if (query.has_limit) docs = docs.slice(0, query.limit.value);
  if (queryReads) for (const d of docs) if (!queryReads.has(d)) queryReads.set(d, versionOf(d));
  return docs;
};

const firestore = new FirestoreServer();
// FirestoreServer.start() binds 0.0.0.0 only; we take its grpc-js Server (with the Firestore
// service already added) and feed it the connections accepted on our own listener instead.
const grpcServer = firestore.server;
if (!grpcServer || typeof grpcServer.createConnectionInjector !== "function") {
  console.error(
    `firestore_fallback: @firestore-emulator/server ${version} no longer exposes its grpc-js ` +
      "Server as .server (or grpc-js lacks createConnectionInjector); update this script",
  );
  process.exit(1);
}
const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());

// Optimistic transactions: each BeginTransaction gets its own id; reads through it (get_all,
// queries) note each document's version; its Commit aborts when one of them has changed.
const transactions = new Map(); // base64 id -> Map(document -> version read)
const txKey = (bytes) => Buffer.from(bytes ?? []).toString("base64");
const ABORTED = grpc.status.ABORTED;

function wrapHandler(method, wrap) {
  const handler = grpcServer.handlers?.get(`/google.firestore.v1.Firestore/${method}`);
  if (!handler) {
    console.error(`firestore_fallback: grpc-js internals changed; ${method} is not corrected`);
    return;
  }
  handler.func = wrap(handler.func);
}

wrapHandler("BeginTransaction", () => (_call, callback) => {
  const id = randomBytes(16);
  transactions.set(txKey(id), new Map());
  callback(null, BeginTransactionResponse.fromObject({ transaction: id }));
});

wrapHandler("Rollback", (rollback) => (call, callback) => {
  transactions.delete(txKey(call.request.transaction));
  rollback(call, callback);
});

wrapHandler("BatchGetDocuments", (batchGet) => (call) => {
  const reads = transactions.get(txKey(call.request.transaction));
  if (reads) {
    for (const path of call.request.documents) {
      try {
        const document = firestore.state.getDocument(path);
        if (!reads.has(document)) reads.set(document, versionOf(document));
      } catch {
        // The package reports the invalid path.
      }
    }
  }
  batchGet(call);
});

wrapHandler("RunQuery", (runQuery) => (call) => {
  queryReads = transactions.get(txKey(call.request.transaction)) ?? null;
  try {
    runQuery(call);
  } finally {
    queryReads = null;
  }
});

/** Why a transaction's commit must abort, or null; forgets the transaction. */
function conflict(transaction) {
  const reads = transactions.get(txKey(transaction));
  transactions.delete(txKey(transaction));
  if (!reads) return null;
  for (const [document, version] of reads) {
    if (versionOf(document) !== version) {
      const reason = `transaction aborted: ${document.getPath()} changed after it was read`;
      console.log(`firestore_fallback: ${reason}`);
      return reason;
    }
  }
  return null;
}

// A commit is atomic: when one of its writes fails, the documents it touched are restored.
wrapHandler("Commit", (commit) => (call, callback) => {
  if (call.request.transaction?.length) {
    const reason = conflict(call.request.transaction);
    if (reason) {
      callback({ code: ABORTED, details: reason, message: reason, name: "Error" }, null);
      return;
    }
  }
  const saved = [];
  for (const write of call.request.writes) {
    const name = write.has_update ? write.update.name : write.has_delete ? write.delete : null;
    if (!name) continue;
    try {
      const document = firestore.state.getDocument(name);
      saved.push([document, document.metadata, document.fields, versions.get(document)]);
    } catch {
      // An invalid name fails the commit below, before any write.
    }
  }
  commit(call, (err, value) => {
    if (err) {
      for (const [document, metadata, fields, version] of saved.reverse()) {
        document.metadata = metadata;
        document.fields = fields;
        versions.set(document, version);
      }
      if (err.code === undefined && err.cause instanceof Error) {
        // The package answers "Something went wrong"; say what did.
        err = { ...err, message: `fallback Firestore emulator: ${err.cause.message}` };
      }
    }
    callback(err, value);
  });
});

/** Drop one database's documents, like the official emulator's REST reset; false if unable. */
function resetDatabase(projectId, databaseId) {
  // FirestoreState keeps projects in a (frozen) record; FirestoreStateProject keeps databases.
  const projects = firestore.state.projects;
  if (!projects || typeof projects !== "object") return false;
  const project = projects[projectId];
  if (project === undefined) return true;
  if (!project.databases || typeof project.databases !== "object") return false;
  const { [databaseId]: _dropped, ...rest } = project.databases;
  project.databases = rest;
  return true;
}

const httpServer = http.createServer((req, res) => {
  const path = (req.url ?? "/").split("?")[0];
  if ((req.method === "GET" || req.method === "HEAD") && path === "/") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("Ok\n");
    return;
  }
  const reset = RESET_PATH.exec(path);
  if (req.method === "DELETE" && reset) {
    if (resetDatabase(decodeURIComponent(reset[1]), decodeURIComponent(reset[2]))) {
      res.writeHead(200, { "content-type": "application/json" });
      res.end("{}");
    } else {
      res.writeHead(501, { "content-type": "text/plain" });
      res.end("reset unsupported with this @firestore-emulator/server version\n");
    }
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("Not found (the fallback Firestore emulator serves gRPC, GET / and the REST reset)\n");
});

/** Read until the first bytes tell HTTP/2 (gRPC) from HTTP/1.x, then hand the socket over. */
function route(socket) {
  let seen = Buffer.alloc(0);
  const onData = (chunk) => {
    seen = Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, HTTP2_PREFACE.length);
    const isHttp2 = seen.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n));
    if (isHttp2 && n < HTTP2_PREFACE.length) return; // undecided: wait for more bytes
    socket.off("data", onData);
    socket.off("error", onEarlyError);
    socket.pause();
    socket.unshift(seen);
    if (isHttp2) {
      injector.injectConnection(socket); // http2 reads the unshifted bytes itself
    } else {
      httpServer.emit("connection", socket);
      socket.resume();
    }
  };
  const onEarlyError = () => socket.destroy();
  socket.on("data", onData);
  socket.on("error", onEarlyError);
}

const listener = net.createServer(route);
listener.on("error", (err) => {
  console.error(`firestore_fallback: cannot listen on ${host}:${port}: ${err.message}`);
  process.exit(1);
});
listener.listen({ host, port }, () => {
  const address = listener.address();
  console.log(
    `Firestore fallback emulator (@firestore-emulator/server ${version}, in memory) ` +
      `listening on ${address.address}:${address.port} (gRPC, plus HTTP/1.1 GET / and reset)`,
  );
});

// A request the package cannot handle must not take the whole emulator down.
process.on("uncaughtException", (err) => {
  console.error("firestore_fallback: uncaught exception (emulator keeps running):", err);
});

function shutdown(signal) {
  console.log(`firestore_fallback: ${signal}, shutting down`);
  listener.close();
  injector.destroy?.();
  grpcServer.forceShutdown();
  process.exit(0);
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
