// The Room panel: join a presence room (docs/presence.md, Room presence) with a display name,
// show who is in it from the client's member list, and "X is typing…" from the members'
// `publish({typing})` signals.

// At most one typing signal per THROTTLE_MS while the user types; TYPING_MS after the last
// keystroke the sender says it stopped, and a receiver that heard nothing for as long (the
// stop was lost with a socket) stops showing it. THROTTLE_MS < TYPING_MS keeps the indicator
// steady while someone types on.
export const THROTTLE_MS = 2_000;
export const TYPING_MS = 3_000;

/** "Ana is typing…", "Ana and Ben are typing…", "Ana, Ben and 2 others are typing…". */
export function typingText(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names[0]}, ${names[1]} and ${names.length - 2} others are typing…`;
}

const ROOM_ERROR_TEXT = {
  room_forbidden: "Your token may not join this room.",
  invalid_room: "That is not a valid room name.",
  too_many_rooms: "This connection is in too many rooms.",
  room_full: "The room is full.",
  invalid_info: "The name could not be sent.",
  not_in_room: "Not in the room (yet): the signal was refused.",
  publish_forbidden: "Your token may not publish here (the rooms_publish claim): nobody sees you typing.",
};

export class RoomPanel {
  #ui;
  #client = null;
  #me = null;
  #room = null;
  #offs = [];
  #members = [];
  #typing = new Map(); // user_id -> timer that hides their indicator
  #lastSignal = 0;
  #idleTimer = null;

  constructor(ui) {
    this.#ui = ui;
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.join(ui.roomName.value.trim(), ui.displayName.value.trim());
    });
    ui.leave.addEventListener("click", () => this.leave());
    ui.text.addEventListener("input", () => this.#onType());
  }

  /** Follow `client` (signed in as `me`, called `name` by default). */
  attach(client, me, name) {
    this.detach();
    this.#client = client;
    this.#me = me;
    if (!this.#ui.displayName.value) this.#ui.displayName.value = name;
    const on = (event, fn) => this.#offs.push(client.on(event, fn));
    on("presenceChange", ({ room, members }) => {
      if (room !== this.#room) return;
      this.#members = members;
      // Someone who left stops typing with them.
      for (const userId of [...this.#typing.keys()]) {
        if (!members.some((m) => m.user_id === userId)) this.#stopTyping(userId);
      }
      this.#render();
    });
    const occupancy = ({ room, users, connections }) => {
      if (room !== this.#room) return;
      this.#ui.occupancy.textContent = `${users} ${users === 1 ? "user" : "users"} · ${connections} ${connections === 1 ? "connection" : "connections"}`;
    };
    on("presence", occupancy);
    on("presenceDiff", occupancy);
    on("publish", ({ room, from, data }) => {
      if (room !== this.#room || from === this.#me) return;
      if (data?.typing === true) this.#startTyping(from);
      else if (data?.typing === false) this.#stopTyping(from);
    });
    on("joined", ({ room }) => {
      if (room === this.#room) this.#status(`In ${room}.`);
    });
    on("disconnected", () => {
      if (this.#room) this.#status(`Rejoining ${this.#room} once the connection is back…`);
    });
    on("left", ({ room, reason }) => {
      if (room === this.#room && reason !== "leave") this.#reset(`Removed from ${room} (${reason}).`);
    });
    on("error", ({ source, code, frame }) => {
      if (source === "server" && frame?.room === this.#room && ROOM_ERROR_TEXT[code]) {
        this.#status(ROOM_ERROR_TEXT[code]);
      }
    });
  }

  detach() {
    for (const off of this.#offs) off();
    this.#offs = [];
    this.#client = null;
    this.#reset("");
  }

  async join(room, name) {
    if (!this.#client || !room) return;
    if (this.#room && this.#room !== room) await this.leave();
    this.#room = room;
    this.#ui.join.hidden = true;
    this.#ui.leave.hidden = false;
    this.#ui.roomName.disabled = true;
    this.#ui.displayName.disabled = true;
    this.#status(`Joining ${room}…`);
    try {
      await this.#client.join(room, { info: name ? { name } : {} });
      this.#ui.text.disabled = false;
    } catch (error) {
      this.#reset(ROOM_ERROR_TEXT[error.code] ?? `Not joined (${error.code}): ${error.message}`);
    }
  }

  async leave() {
    const room = this.#room;
    if (!room) return;
    this.#sendTyping(false);
    this.#reset(`Left ${room}.`);
    await this.#client?.leave(room);
  }

  #reset(status) {
    this.#room = null;
    this.#members = [];
    for (const userId of [...this.#typing.keys()]) this.#stopTyping(userId);
    clearTimeout(this.#idleTimer);
    this.#idleTimer = null;
    this.#lastSignal = 0;
    this.#ui.join.hidden = false;
    this.#ui.leave.hidden = true;
    this.#ui.roomName.disabled = false;
    this.#ui.displayName.disabled = false;
    this.#ui.text.disabled = true;
    this.#ui.text.value = "";
    this.#ui.occupancy.textContent = "";
    this.#status(status);
    this.#render();
  }

  // --- typing, sent ------------------------------------------------------------------------

  #onType() {
    if (!this.#room) return;
    if (Date.now() - this.#lastSignal >= THROTTLE_MS) this.#sendTyping(true);
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => this.#sendTyping(false), TYPING_MS);
  }

  #sendTyping(typing) {
    if (!this.#room || !this.#client) return;
    if (!typing && this.#lastSignal === 0) return; // never said it was typing
    this.#client.publish(this.#room, { typing });
    this.#lastSignal = typing ? Date.now() : 0;
    if (!typing) {
      clearTimeout(this.#idleTimer);
      this.#idleTimer = null;
    }
  }

  // --- typing, heard -----------------------------------------------------------------------

  #startTyping(userId) {
    clearTimeout(this.#typing.get(userId));
    this.#typing.set(
      userId,
      setTimeout(() => this.#stopTyping(userId), TYPING_MS),
    );
    this.#renderTyping();
  }

  #stopTyping(userId) {
    clearTimeout(this.#typing.get(userId));
    if (this.#typing.delete(userId)) this.#renderTyping();
  }

  // --- rendering ---------------------------------------------------------------------------

  #nameOf(userId) {
    const name = this.#members.find((m) => m.user_id === userId)?.info?.name;
    return typeof name === "string" && name ? name : userId;
  }

  #status(text) {
    this.#ui.status.textContent = text;
  }

  #render() {
    const items = this.#members.map((member) => {
      const item = document.createElement("li");
      item.className = "person";
      item.dataset.testid = "member";
      item.dataset.uid = member.user_id;
      item.dataset.state = "online";
      const dot = document.createElement("span");
      dot.className = "dot";
      const name = document.createElement("span");
      name.className = "person-name";
      name.textContent = this.#nameOf(member.user_id) + (member.user_id === this.#me ? " (you)" : "");
      name.title = member.user_id;
      item.append(dot, name);
      if (member.devices > 1) {
        const devices = document.createElement("span");
        devices.className = "muted small";
        devices.textContent = `${member.devices} devices`;
        item.append(devices);
      }
      return item;
    });
    this.#ui.members.replaceChildren(...items);
    this.#renderTyping();
  }

  #renderTyping() {
    this.#ui.typing.textContent = typingText([...this.#typing.keys()].map((id) => this.#nameOf(id)));
  }
}
