// Who is typing in the room shown: each `Typing` notice holds for its `expires_in_ms` unless
// refreshed; `active=false`, or a message from that name, ends it at once. (The page only shows
// them: browsers cannot open the Connect stream that sends typing notices.)

import type { Typing } from "./gen/chat/v1/chat_service_pb";

/** When a notice says nothing about its lifetime (the server's is 6 s). */
const DEFAULT_EXPIRY_MS = 6_000;
const MAX_EXPIRY_MS = 30_000;

export class Typists {
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>();

  constructor(private readonly changed: (names: string[]) => void) {}

  notice(typing: Typing): void {
    if (!typing.active) return this.stopped(typing.name);
    const fresh = !this.timers.has(typing.name);
    clearTimeout(this.timers.get(typing.name));
    const ms = Math.min(typing.expiresInMs || DEFAULT_EXPIRY_MS, MAX_EXPIRY_MS);
    this.timers.set(
      typing.name,
      setTimeout(() => this.stopped(typing.name), ms),
    );
    if (fresh) this.changed(this.names());
  }

  stopped(name: string): void {
    if (!this.timers.has(name)) return;
    clearTimeout(this.timers.get(name));
    this.timers.delete(name);
    this.changed(this.names());
  }

  clear(): void {
    for (const timer of this.timers.values()) clearTimeout(timer);
    const had = this.timers.size > 0;
    this.timers.clear();
    if (had) this.changed([]);
  }

  names(): string[] {
    return [...this.timers.keys()];
  }
}

/** "bob is typing…", "bob and carol are typing…", "4 people are typing…", or "". */
export function typingLine(names: string[]): string {
  switch (names.length) {
    case 0:
      return "";
    case 1:
      return `${names[0]} is typing…`;
    case 2:
    case 3:
      return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]} are typing…`;
    default:
      return `${names.length} people are typing…`;
  }
}
