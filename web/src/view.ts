// Rendering. Every piece of user text goes in through textContent, never as HTML.

import type { ChatMessage, RoomInfo } from "./gen/chat/v1/chat_service_pb";

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

export class View {
  readonly joinForm = byId<HTMLFormElement>("join");
  readonly name = byId<HTMLInputElement>("name");
  readonly token = byId<HTMLInputElement>("token");
  readonly room = byId<HTMLInputElement>("room");
  readonly compose = byId<HTMLFormElement>("compose");
  readonly message = byId<HTMLTextAreaElement>("message");
  private readonly log = byId<HTMLOListElement>("messages");
  private readonly members = byId<HTMLUListElement>("members");
  private readonly rooms = byId<HTMLUListElement>("rooms");
  private readonly statusLine = byId<HTMLParagraphElement>("status");
  private readonly title = byId<HTMLElement>("current-room");

  status(text: string, kind: "ok" | "wait" | "error" = "ok"): void {
    this.statusLine.textContent = text;
    this.statusLine.className = kind;
  }

  enter(room: string): void {
    this.log.replaceChildren();
    this.members.replaceChildren();
    this.title.textContent = `#${room}`;
    document.title = `#${room} — grpcchat`;
  }

  showMessage(m: ChatMessage): void {
    const kind = m.recipient ? " direct" : m.action ? " action" : "";
    const item = el("li", `message${kind}`);
    item.dataset.id = m.id;
    item.dataset.seq = m.seq.toString();
    if (m.sentAt) {
      const at = new Date(Number(m.sentAt.seconds) * 1000);
      const time = el("time", "time", at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
      time.dateTime = at.toISOString();
      item.append(time, " ");
    }
    item.append(el("span", "sender", m.sender));
    if (m.recipient) item.append(" ", el("span", "recipient", `→ ${m.recipient}`));
    item.append(" ", el("span", "text", m.text));
    this.append(item);
  }

  notice(text: string, kind = ""): void {
    this.append(el("li", kind ? `notice ${kind}` : "notice", text));
  }

  private append(item: HTMLLIElement): void {
    const log = this.log;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(item);
    while (log.childElementCount > MAX_LOG) log.firstElementChild?.remove();
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
      const count = el("span", "count", String(info.members));
      count.setAttribute("aria-hidden", "true");
      const item = el("li");
      item.append(button, count);
      return item;
    });
    this.rooms.replaceChildren(...items);
  }
}
