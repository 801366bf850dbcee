// The Contacts panel: whether a few users are online, read straight from Firestore
// (`presence/{uid}`, docs/presence.md) with the Firebase SDK's onSnapshot. It needs no socket:
// this is how an app shows presence on pages that hold no gateway connection.

import { doc, onSnapshot } from "firebase/firestore";

const STORAGE_KEY = "presence-demo-contacts";
// The user the README's `make token USER=user123` examples connect as.
const DEFAULT_CONTACTS = ["user123"];
// "last seen" is relative: redraw it now and then, not on every frame.
const TICK_MS = 10_000;

/** "just now", "42 s ago", "5 min ago", "3 h ago", else the date. */
export function relativeTime(date, now = Date.now()) {
  const seconds = Math.max(0, Math.round((now - date.getTime()) / 1000));
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)} h ago`;
  return `on ${date.toLocaleDateString()}`;
}

/** What a contact's presence document says, as `{state, text}`. */
export function describePresence(data, error = null, now = Date.now()) {
  if (error) return { state: "unknown", text: `presence unavailable (${error.code ?? error.message})` };
  if (data === undefined) return { state: "unknown", text: "waiting for Firestore…" };
  if (data === null) return { state: "offline", text: "never connected" };
  if (data.state === "online") {
    const devices = Number.isInteger(data.devices) ? data.devices : 1;
    return { state: "online", text: `online (${devices} ${devices === 1 ? "device" : "devices"})` };
  }
  const seen = data.last_seen_at?.toDate?.();
  return { state: "offline", text: seen ? `last seen ${relativeTime(seen, now)}` : "offline" };
}

export class ContactsPanel {
  #ui;
  #db = null;
  #me = null;
  #contacts = new Map(); // uid -> {data, error, unsubscribe}
  #ticker = null;

  constructor(ui) {
    this.#ui = ui;
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const uid = ui.input.value.trim();
      if (!uid) return;
      ui.input.value = "";
      this.add(uid);
      this.#save();
    });
  }

  /** Follow the stored contacts for the signed-in user `me`. */
  start(db, me) {
    this.stop();
    this.#db = db;
    this.#me = me;
    this.#ui.me.textContent = me;
    for (const uid of this.#load()) this.add(uid);
    this.#ticker = setInterval(() => this.#render(), TICK_MS);
  }

  stop() {
    for (const { unsubscribe } of this.#contacts.values()) unsubscribe();
    this.#contacts.clear();
    if (this.#ticker !== null) clearInterval(this.#ticker);
    this.#ticker = null;
    this.#db = null;
    this.#ui.list.replaceChildren();
  }

  add(uid) {
    if (!this.#db || this.#contacts.has(uid)) return;
    const entry = { data: undefined, error: null, unsubscribe: () => {} };
    this.#contacts.set(uid, entry);
    entry.unsubscribe = onSnapshot(
      doc(this.#db, "presence", uid),
      (snap) => {
        // Offline, the SDK answers from its cache, where a document never read is missing:
        // that is "no answer yet", not "never connected".
        if (!snap.exists() && snap.metadata.fromCache) entry.data = undefined;
        else entry.data = snap.exists() ? snap.data() : null;
        entry.error = null;
        this.#render();
      },
      (error) => {
        // Firestore ends a listener on an error (e.g. permission-denied by firestore.rules).
        entry.error = error;
        this.#render();
      },
    );
    this.#render();
  }

  remove(uid) {
    this.#contacts.get(uid)?.unsubscribe();
    this.#contacts.delete(uid);
    this.#save();
    this.#render();
  }

  #render() {
    const now = Date.now();
    const items = [...this.#contacts].map(([uid, entry]) => {
      const { state, text } = describePresence(entry.data, entry.error, now);
      const item = document.createElement("li");
      item.className = "person";
      item.dataset.testid = "contact";
      item.dataset.uid = uid;
      item.dataset.state = state;
      const dot = document.createElement("span");
      dot.className = "dot";
      const name = document.createElement("span");
      name.className = "person-name";
      name.textContent = uid === this.#me ? `${uid} (you)` : uid;
      const status = document.createElement("span");
      status.className = "muted small";
      status.dataset.testid = "contact-status";
      status.textContent = text;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "button ghost remove";
      remove.title = `Stop following ${uid}`;
      remove.textContent = "×";
      remove.addEventListener("click", () => this.remove(uid));
      item.append(dot, name, status, remove);
      return item;
    });
    this.#ui.list.replaceChildren(...items);
  }

  #load() {
    try {
      const stored = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "null");
      if (Array.isArray(stored)) return stored.filter((uid) => typeof uid === "string");
    } catch {
      // A corrupt entry: start from the defaults.
    }
    return DEFAULT_CONTACTS;
  }

  #save() {
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify([...this.#contacts.keys()]));
    } catch {
      // Storage refused (private mode, quota): the list lives as long as the page.
    }
  }
}
