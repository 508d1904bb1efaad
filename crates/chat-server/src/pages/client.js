// The room chat's client: an ES module with no build step and no
// dependencies, served by the chat server at /client.js.
//
//   import { ChatClient } from "https://chat.example.com/client.js";
//   const chat = new ChatClient({ room: "rust", name: "alice" });
//   chat.addEventListener("line", (event) => console.log(event.detail));
//   chat.connect();
//
// It speaks the JSON frames the README describes, keeps the room's member
// list from the presence changes, reconnects with exponential backoff and
// jitter, and resumes from the last line it saw, so that every line of the
// room reaches the page exactly once and in order, across reconnects.

/**
 * Waits that grow from `min` milliseconds, doubling to `max`, each drawn
 * at random from the upper half of the current step (jitter, so that
 * clients dropped together do not come back together).
 */
export class Backoff {
  /**
   * @param {{min?: number, max?: number}} [options] the first and longest
   *   step, in milliseconds (500 and 10 000 by default)
   */
  constructor({ min = 500, max = 10000 } = {}) {
    this.min = min;
    this.max = max;
    this.step = min;
  }

  /** @returns {number} the next wait, in milliseconds */
  next() {
    const delay = Math.round(this.step * (0.5 + Math.random() / 2));
    this.step = Math.min(this.step * 2, this.max);
    return delay;
  }

  /** Starts again from the shortest step (after a connection that worked). */
  reset() {
    this.step = this.min;
  }
}

/**
 * A line of the room, or one sent to this connection alone.
 *
 * @typedef {object} Line
 * @property {string} kind `chat`, `joined`, `left`, `nick`, `private`,
 *   `info` or `data` (an application event from the server API)
 * @property {string} [from] who said it, joined, left or changed name
 * @property {string} [to] the new name (`nick`), or the addressee (`private`)
 * @property {string} [text] the text (`chat`, `private`, `info`)
 * @property {string[]} [names] everyone a burst of joins or leaves is about
 * @property {*} [data] the event's content (`data`)
 * @property {number} time when the server sent it, in ms since 1970
 * @property {string|null} epoch the room's epoch (`null` for a personal line)
 * @property {number|null} offset the line's place in the room (`null` for a
 *   personal line)
 * @property {boolean} personal whether it was sent to this connection alone
 *   (replies, private messages) rather than to the room
 */

/**
 * What the connection is doing:
 * - `idle`: not started (see {@link ChatClient#connect});
 * - `connecting`: opening a socket;
 * - `open`: connected;
 * - `closed`: the socket closed, and the client connects again after
 *   `delay` milliseconds;
 * - `stopped`: {@link ChatClient#close} was called, or the server closed
 *   the connection for good (see `isFinal`).
 *
 * @typedef {"idle"|"connecting"|"open"|"closed"|"stopped"} State
 */

/**
 * Options of a {@link ChatClient}.
 *
 * @typedef {object} ChatOptions
 * @property {string} room the room to join (1 to 64 letters, digits, `-`,
 *   `_` or `.`)
 * @property {string} [name] the name to chat under (the server picks
 *   `guest-N` without one, and a token's name wins over it)
 * @property {string} [token] a sign-in token, for a server started with
 *   `--jwt-secret`
 * @property {string} [url] the chat endpoint, absolute or relative to the
 *   page (`http(s):` is taken as `ws(s):`); by default `/ws` on the server
 *   this module was loaded from (`wss:` if it came over https)
 * @property {number} [backoffMin] the first wait before reconnecting, in
 *   ms (500)
 * @property {number} [backoffMax] the longest wait, in ms (10 000)
 * @property {(code: number) => boolean} [isFinal] whether a close code means
 *   "do not come back": by default 1008 (refused by policy) and 4500 to
 *   4999 (the server API's `/api/disconnect` with such a code)
 */

/** Presence changes kept while the member list has not arrived yet. */
const MAX_WAITING = 1000;

/** The close codes after which a client does not reconnect, by default. */
function finalByDefault(code) {
  return code === 1008 || (code >= 4500 && code <= 4999);
}

/**
 * `url` (by default `/ws` on the server this module came from), resolved
 * against the page and made a WebSocket URL: `http:` becomes `ws:`,
 * `https:` `wss:`. Throws a `TypeError` for anything else.
 */
function endpoint(url) {
  const base = globalThis.location ? globalThis.location.href : import.meta.url;
  const resolved = new URL(url ?? new URL("/ws", import.meta.url).href, base);
  const schemes = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" };
  if (!schemes[resolved.protocol]) {
    throw new TypeError("ChatClient's url must be a ws:, wss:, http: or https: URL, not " + resolved.href);
  }
  resolved.protocol = schemes[resolved.protocol];
  return resolved;
}

/**
 * A connection to one room of the chat server, kept up until
 * {@link ChatClient#close}.
 *
 * Events (each a `CustomEvent`; what it carries is in `detail`):
 * - `line`: a {@link Line}, each line of the room once, in order, across
 *   reconnects; personal lines (replies, private messages) too;
 * - `presence`: `{members, joins, leaves}`, the sorted member list after a
 *   change, and the names that joined and left it;
 * - `state`: `{state, code, delay}`, the new {@link State}, with the close
 *   code and the wait before reconnecting when it is `closed`;
 * - `resync`: `{missed}`, lines of the room this client will never see
 *   (history no longer held them, or the server restarted); `null` when
 *   the count is unknown;
 * - `welcome`: `{room, name, epoch, next}`, on each connection, with the
 *   name the server gave this client.
 *
 * @example
 * const chat = new ChatClient({ room: "rust", name: "alice" });
 * chat.addEventListener("line", ({ detail }) => console.log(detail.from, detail.text));
 * chat.addEventListener("presence", ({ detail }) => console.log(detail.members));
 * chat.connect();
 * chat.send("hello");             // a line
 * chat.sendPrivate("bob", "hi");  // /msg bob hi
 */
export class ChatClient extends EventTarget {
  #options;
  #backoff;
  /** @type {WebSocket|null} */
  #ws = null;
  #timer = null;
  /** @type {State} */
  #state = "idle";
  #name;
  // Where the room stands for this client: the epoch and offset of the
  // last line it saw (the offset is null before any).
  #epoch = null;
  #offset = null;
  // The member list: names as of `#listed` (the room's epoch and offset),
  // then changed by the presence of the lines from there on. Changes that
  // come before the list wait for it.
  #members = new Set();
  #listed = null;
  #waiting = [];

  /** @param {ChatOptions} options */
  constructor(options) {
    super();
    if (!options || typeof options.room !== "string" || options.room === "") {
      throw new TypeError("ChatClient needs a room: new ChatClient({ room: \"lobby\" })");
    }
    this.#options = { isFinal: finalByDefault, ...options, url: endpoint(options.url).href };
    this.#backoff = new Backoff({ min: options.backoffMin, max: options.backoffMax });
    this.#name = options.name ?? null;
  }

  /** @returns {string} the room */
  get room() {
    return this.#options.room;
  }

  /** @returns {string|null} the name the server knows this client by */
  get name() {
    return this.#name;
  }

  /** @returns {State} what the connection is doing */
  get state() {
    return this.#state;
  }

  /** @returns {string[]} the room's members, sorted */
  get members() {
    return [...this.#members].sort();
  }

  /** @returns {{epoch: string, offset: number}|null} the last line seen */
  get position() {
    return this.#epoch === null || this.#offset === null
      ? null
      : { epoch: this.#epoch, offset: this.#offset };
  }

  /** Connects, and keeps connecting until {@link ChatClient#close}. */
  connect() {
    if (this.#ws !== null || this.#timer !== null) return;
    this.#open();
  }

  /** Closes the connection for good: no reconnecting. */
  close() {
    clearTimeout(this.#timer);
    this.#timer = null;
    const ws = this.#ws;
    this.#ws = null;
    if (ws !== null) ws.close(1000, "bye");
    this.#setState("stopped");
  }

  /**
   * Sends a line, or a command (`/msg NAME text`, `/who`, `/nick NAME`).
   *
   * @param {string} text
   * @returns {boolean} whether it went out (it does not while the
   *   connection is down, nor when the text is blank)
   */
  send(text) {
    const ws = this.#ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN || String(text).trim() === "") {
      return false;
    }
    ws.send(String(text));
    return true;
  }

  /**
   * A private line to every connection of `name` (with a copy to this one).
   *
   * @param {string} name
   * @param {string} text
   * @returns {boolean} whether it went out
   */
  sendPrivate(name, text) {
    return this.send("/msg " + name + " " + text);
  }

  /**
   * Chats under another name from now on.
   *
   * @param {string} name
   * @returns {boolean} whether it went out
   */
  rename(name) {
    return this.send("/nick " + name);
  }

  /**
   * Asks who is in the room: the answer is an `info` line, `in ROOM:
   * NAMES` (the `members` property holds the same, kept up to date).
   *
   * @returns {boolean} whether it went out
   */
  who() {
    return this.send("/who");
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #setState(state, code = null, delay = null) {
    this.#state = state;
    this.#emit("state", { state, code, delay });
  }

  #open() {
    this.#timer = null;
    const query = new URLSearchParams({ room: this.#options.room, format: "json" });
    if (this.#name !== null) query.set("name", this.#name);
    if (this.#options.token) query.set("token", this.#options.token);
    if (this.#epoch !== null && this.#offset !== null) {
      query.set("epoch", this.#epoch);
      query.set("offset", String(this.#offset));
    }
    const url = new URL(this.#options.url);
    url.search = query.toString();
    this.#setState("connecting");
    const ws = new WebSocket(url.href);
    this.#ws = ws;
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      this.#backoff.reset();
      this.#setState("open");
    };
    ws.onmessage = (event) => {
      if (this.#ws === ws && typeof event.data === "string") this.#frame(event.data);
    };
    ws.onclose = (event) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      if (this.#options.isFinal(event.code)) {
        this.#setState("stopped", event.code);
        return;
      }
      const delay = this.#backoff.next();
      this.#timer = setTimeout(() => this.#open(), delay);
      this.#setState("closed", event.code, delay);
    };
  }

  #frame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    switch (frame.type) {
      case "message": {
        // Each line once: resumed history and live delivery never overlap,
        // and anything at or before the last offset seen is skipped anyway.
        if (frame.epoch === this.#epoch && this.#offset !== null && frame.offset <= this.#offset) {
          return;
        }
        this.#epoch = frame.epoch;
        this.#offset = frame.offset;
        const data = frame.data || {};
        if (data.presence) this.#presenceOf(frame);
        this.#line(data, frame.epoch, frame.offset, false);
        break;
      }
      case "personal":
        this.#personal(frame.data || {});
        break;
      case "resync":
      case "lagged":
        this.#emit("resync", { missed: frame.missed ?? null });
        break;
    }
  }

  #line(data, epoch, offset, personal) {
    if (data.kind === "nick" && data.from === this.#name) this.#name = data.to;
    this.#emit("line", { ...data, epoch, offset, personal });
  }

  #personal(data) {
    switch (data.kind) {
      case "welcome":
        this.#name = data.name;
        // A new connection: a new member list follows.
        this.#listed = null;
        this.#waiting = [];
        // epoch is null while a node is still placing a room new to it:
        // the lines that follow tell where the room stands.
        if (data.epoch !== null && data.epoch !== this.#epoch) {
          // A new epoch (first visit, or the server restarted): from just
          // before the room's next line.
          this.#epoch = data.epoch;
          this.#offset = data.next > 0 ? data.next - 1 : null;
        }
        this.#emit("welcome", { room: data.room, name: data.name, epoch: data.epoch, next: data.next });
        break;
      case "members": {
        const before = this.#members;
        this.#members = new Set(data.members);
        this.#listed = { epoch: data.epoch, offset: data.at };
        const waiting = this.#waiting;
        this.#waiting = [];
        for (const frame of waiting) this.#presenceOf(frame, null);
        const joins = [...this.#members].filter((name) => !before.has(name));
        const leaves = [...before].filter((name) => !this.#members.has(name));
        this.#changed(joins, leaves);
        break;
      }
      case "presence":
        this.#apply(data);
        break;
      default:
        this.#line(data, null, null, true);
    }
  }

  // A line's change to the member list, if the list does not hold it yet;
  // told as a `presence` event unless `told` is null.
  #presenceOf(frame, told = undefined) {
    const listed = this.#listed;
    if (listed === null) {
      if (this.#waiting.length < MAX_WAITING) this.#waiting.push(frame);
      return;
    }
    if (listed.epoch === null || frame.epoch !== listed.epoch || frame.offset >= listed.offset) {
      this.#apply(frame.data.presence, told);
    }
  }

  // Leaves, then joins; a change the list already has changes nothing.
  #apply(diff, told = undefined) {
    const joins = new Set();
    const leaves = new Set();
    for (const name of diff.leaves || []) {
      if (this.#members.delete(name)) leaves.add(name);
    }
    for (const name of diff.joins || []) {
      if (this.#members.has(name)) continue;
      this.#members.add(name);
      // Gone and back in one change: no change.
      if (!leaves.delete(name)) joins.add(name);
    }
    if (told !== null && (joins.size > 0 || leaves.size > 0)) this.#changed([...joins], [...leaves]);
  }

  // The member list is read when asked for: sorting ten thousand names
  // for each change nobody reads would cost more than the change.
  #changed(joins, leaves) {
    const client = this;
    this.#emit("presence", {
      joins: joins.sort(),
      leaves: leaves.sort(),
      get members() {
        return client.members;
      },
    });
  }
}
