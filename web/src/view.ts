// Rendering. Every piece of user text goes in through textContent, never as HTML.

import type { ChatMessage, RoomInfo } from "./gen/chat/v1/chat_service_pb";
import { apply, DELETED, postOf, quoteText, type Post } from "./thread";

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page has no #${id}`);
  return node as T;
}

/** Keep this many entries in the log; older ones are dropped from the top. */
const MAX_LOG = 1000;
export const UNREAD_DIVIDER = "── unread ──";

/** What a person can do to a message shown. */
export interface MessageActions {
  /** A reaction chip was clicked: add or take back one's own `emoji`. */
  react(post: Post, emoji: string): void;
  /** The message's handle (its seq) was clicked. */
  handle(post: Post): void;
}

interface Shown {
  post: Post;
  item: HTMLLIElement;
}

export class View {
  readonly joinForm = byId<HTMLFormElement>("join");
  readonly name = byId<HTMLInputElement>("name");
  readonly token = byId<HTMLInputElement>("token");
  readonly room = byId<HTMLInputElement>("room");
  readonly compose = byId<HTMLFormElement>("compose");
  readonly message = byId<HTMLTextAreaElement>("message");
  private readonly log = byId<HTMLOListElement>("messages");
  private readonly typing = byId<HTMLParagraphElement>("typing");
  private readonly members = byId<HTMLUListElement>("members");
  private readonly rooms = byId<HTMLUListElement>("rooms");
  private readonly statusLine = byId<HTMLParagraphElement>("status");
  private readonly title = byId<HTMLElement>("current-room");
  /** The room's messages shown, by id: what relation entries and replies refer to. */
  private readonly shown = new Map<string, Shown>();
  /** Replies shown, by the id of the message they answer (their quote follows it). */
  private readonly replies = new Map<string, Set<string>>();

  /** Who the user is, as far as the page knows (their reaction chips show pressed). */
  me = "";

  constructor(private readonly actions: MessageActions) {}

  status(text: string, kind: "ok" | "wait" | "error" = "ok"): void {
    this.statusLine.textContent = text;
    this.statusLine.className = kind;
  }

  enter(room: string): void {
    this.log.replaceChildren();
    this.members.replaceChildren();
    this.shown.clear();
    this.replies.clear();
    this.setTyping("");
    this.title.textContent = `#${room}`;
    document.title = `#${room} — grpcchat`;
  }

  /** A message: a new line, or (a relation entry) a change to the line of the one it changes. */
  showMessage(m: ChatMessage): void {
    if (m.relation) return this.change(m);
    const known = m.seq > 0n && !m.recipient ? this.shown.get(m.id) : undefined;
    if (known) {
      // The same message again (current state): what it says now wins.
      known.post = postOf(m);
      return this.refresh(known);
    }
    const shown: Shown = { post: postOf(m), item: el("li") };
    if (m.seq > 0n && !m.recipient) this.track(m, shown);
    this.render(shown);
    this.append(shown.item);
  }

  /** Remember a room message shown, by id, and as a reply to the one it answers. */
  private track(m: ChatMessage, shown: Shown): void {
    this.shown.set(m.id, shown);
    if (m.replyTo) {
      const replies = this.replies.get(m.replyTo) ?? new Set<string>();
      this.replies.set(m.replyTo, replies.add(m.id));
    }
  }

  /** Apply relation entry `m` to the message it targets, if shown (else there is nothing to
   * change: the target is older than what the page holds). */
  private change(m: ChatMessage): void {
    const target = this.shown.get(m.relation?.target ?? "");
    if (target && apply(target.post, m)) this.refresh(target);
  }

  private refresh(shown: Shown): void {
    this.keepingBottom(() => {
      this.render(shown);
      for (const id of this.replies.get(shown.post.id) ?? []) {
        const reply = this.shown.get(id);
        if (reply) this.render(reply);
      }
    });
  }

  /** The room's history was replaced (a new epoch): the lines shown stay, as a record, but
   * name messages that are gone, so their numbers and reaction chips no longer act. */
  forget(): void {
    for (const { item } of this.shown.values()) {
      item.querySelector(":scope > .seq")?.remove();
      for (const chip of item.querySelectorAll("button")) chip.disabled = true;
    }
    this.shown.clear();
    this.replies.clear();
  }

  /** Message `seq` of the room, if shown. */
  at(seq: bigint): Post | undefined {
    for (const { post } of this.shown.values()) if (post.seq === seq) return post;
    return undefined;
  }

  /** The latest message shown of `sender` that is not deleted. */
  lastOf(sender: string): Post | undefined {
    let last: Post | undefined;
    for (const { post } of this.shown.values()) {
      if (post.sender === sender && !post.deleted && (!last || post.seq > last.seq)) last = post;
    }
    return last;
  }

  private render({ post, item }: Shown): void {
    const kind = post.recipient ? " direct" : post.action ? " action" : "";
    item.className = `message${kind}${post.deleted ? " deleted" : ""}`;
    item.dataset.id = post.id;
    item.dataset.seq = post.seq.toString();
    const parts: (Node | string)[] = [];
    const quoted = post.replyTo ? this.shown.get(post.replyTo) : undefined;
    if (quoted) parts.push(this.quote(quoted));
    if (post.seq > 0n && !post.recipient) {
      const handle = el("span", "seq", post.seq.toString());
      handle.title = `message ${post.seq}: /reply ${post.seq} …, /react ${post.seq} 👍`;
      handle.addEventListener("click", () => this.actions.handle(post));
      parts.push(handle, " ");
    }
    if (post.sentAt) {
      const at = post.sentAt;
      const time = el("time", "time", at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
      time.dateTime = at.toISOString();
      parts.push(time, " ");
    }
    parts.push(el("span", "sender", post.sender));
    if (post.recipient) parts.push(" ", el("span", "recipient", `→ ${post.recipient}`));
    parts.push(" ", el("span", "text", post.deleted ? DELETED : post.text));
    if (post.edited && !post.deleted) parts.push(" ", el("span", "edited", "(edited)"));
    if (post.reactions.size > 0) parts.push(this.reactions(post));
    item.replaceChildren(...parts);
  }

  /** "↪ bob: the start of what bob said", above a reply; a click shows the message. */
  private quote(target: Shown): HTMLElement {
    const quote = el("div", "quote");
    quote.append("↪ ", el("span", "quote-sender", target.post.sender), " ");
    quote.append(el("span", "quote-text", quoteText(target.post)));
    quote.title = "show the message this answers";
    quote.addEventListener("click", () => target.item.scrollIntoView({ block: "center" }));
    return quote;
  }

  /** "👍 alice, bob · 🎉 carol": one chip per emoji; a click adds or takes back one's own. */
  private reactions(post: Post): HTMLElement {
    const line = el("div", "reactions");
    for (const [emoji, names] of post.reactions) {
      if (line.childElementCount > 0) line.append(el("span", "separator", " · "));
      const chip = el("button", "reaction", `${emoji} ${names.join(", ")}`);
      chip.type = "button";
      const mine = names.includes(this.me);
      chip.setAttribute("aria-pressed", String(mine));
      chip.title = mine ? `take back your ${emoji}` : `react with ${emoji}`;
      chip.addEventListener("click", () => this.actions.react(post, emoji));
      line.append(chip);
    }
    return line;
  }

  /** The lowest seq of a room message shown, if any. */
  firstSeq(): bigint | undefined {
    let first: bigint | undefined;
    for (const { post } of this.shown.values()) if (first === undefined || post.seq < first) first = post.seq;
    return first;
  }

  /** Room messages from before those shown (oldest first, in their current state): put before
   * them. Relation entries are already applied to what they change. */
  showEarlier(ms: ChatMessage[]): void {
    const items: HTMLLIElement[] = [];
    for (const m of ms) {
      if (m.relation || m.recipient || m.seq === 0n || this.shown.has(m.id)) continue;
      const shown: Shown = { post: postOf(m), item: el("li") };
      this.track(m, shown);
      this.render(shown);
      items.push(shown.item);
    }
    const first = this.log.querySelector(":scope > li.message");
    this.keepingBottom(() => (first ? first.before(...items) : this.log.append(...items)));
  }

  /** "── unread ──" before the first message after `readSeq` that `me` did not send (and that
   * is not deleted: unread counts leave those out). */
  markUnread(readSeq: bigint, me: string): void {
    this.log.querySelector(":scope > li.divider")?.remove();
    for (const item of this.log.querySelectorAll<HTMLLIElement>(":scope > li.message")) {
      const post = this.shown.get(item.dataset.id ?? "")?.post;
      if (post && post.seq > readSeq && post.sender !== me && !post.deleted) {
        const divider = el("li", "divider", UNREAD_DIVIDER);
        divider.setAttribute("role", "separator");
        item.before(divider);
        return;
      }
    }
  }

  notice(text: string, kind = ""): void {
    this.append(el("li", kind ? `notice ${kind}` : "notice", text));
  }

  /** "bob is typing…" under the log, or nothing. */
  setTyping(text: string): void {
    this.typing.textContent = text;
  }

  private append(item: HTMLLIElement): void {
    const log = this.log;
    this.keepingBottom(() => {
      log.append(item);
      while (log.childElementCount > MAX_LOG) this.drop(log.firstElementChild);
    });
  }

  private drop(item: Element | null): void {
    if (!item) return;
    const id = (item as HTMLElement).dataset.id;
    if (id && this.shown.get(id)?.item === item) {
      this.shown.delete(id);
      this.replies.delete(id);
    }
    item.remove();
  }

  /** Do `change`; if the log was scrolled to the bottom before, it stays there. */
  private keepingBottom(change: () => void): void {
    const log = this.log;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    change();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  setMembers(names: Iterable<string>): void {
    const sorted = [...new Set(names)].sort();
    this.members.replaceChildren(...sorted.map((n) => el("li", "", n)));
  }

  setRooms(rooms: RoomInfo[], current: string, pick: (room: string) => void): void {
    const items = rooms.map((info) => {
      const button = el("button", "", info.name);
      button.type = "button";
      if (info.name === current) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => pick(info.name));
      const item = el("li");
      item.append(button);
      // The room shown is being read: its count would only say what the marker has not caught.
      if (info.unread > 0 && info.name !== current) {
        const unread = el("span", "unread", String(info.unread));
        unread.append(el("span", "visually-hidden", " unread"));
        unread.title = `${info.unread} unread`;
        item.append(unread);
      }
      const count = el("span", "count", String(info.members));
      count.setAttribute("aria-hidden", "true");
      item.append(count);
      return item;
    });
    this.rooms.replaceChildren(...items);
  }
}
