// The read marker of the room shown: what the page has shown is read. The marker is moved with
// the unary MarkRead (the page cannot open the Connect stream), at most once a second, and only
// forward of what the server already said it is (RoomJoined.read_seq, ReadMarker events).

import { chat, hasToken } from "./api";

const EVERY_MS = 1_000;

export class ReadMarker {
  /** The marker as far as the server has told or confirmed. */
  private marked = 0n;
  /** The highest seq shown. */
  private seen = 0n;
  private last = 0; // when MarkRead was last called (ms)
  private timer: ReturnType<typeof setTimeout> | undefined;
  private sending = false;
  private stopped = false;
  /** Until the room's first join is complete and what it shows is on the screen (the unread
   * messages before its replay too): marked during the replay, the marker moved past messages
   * the page had not shown yet. */
  private held = true;

  constructor(
    private readonly name: string,
    private readonly room: string,
  ) {
    document.addEventListener("visibilitychange", this.onVisible);
  }

  /** The server says the marker is at `seq` (it only moves forward). */
  known(seq: bigint): void {
    if (seq > this.marked) this.marked = seq;
  }

  /** The join is complete and its messages shown: what is shown may be marked now. */
  release(): void {
    this.held = false;
    this.schedule();
  }

  /** Unread messages could not be shown: nothing is marked in this room. */
  freeze(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.stop();
  }

  /** The room's history was replaced (a new epoch): its seqs start again from 1. */
  reset(): void {
    this.marked = 0n;
    this.seen = 0n;
  }

  /** Everything up to `seq` is on the screen. */
  shown(seq: bigint): void {
    if (seq > this.seen) this.seen = seq;
    this.schedule();
  }

  /** The room is left: what was shown and not marked yet is marked now, without waiting. */
  stop(): void {
    const pending = this.timer !== undefined;
    clearTimeout(this.timer);
    this.timer = undefined;
    if (pending) void this.flush();
    this.stopped = true;
    document.removeEventListener("visibilitychange", this.onVisible);
  }

  private readonly onVisible = (): void => this.schedule();

  private schedule(): void {
    if (this.stopped || this.held || this.timer !== undefined || this.sending) return;
    if (this.seen <= this.marked || document.visibilityState === "hidden") return;
    const wait = Math.max(0, this.last + EVERY_MS - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, wait);
  }

  private async flush(): Promise<void> {
    if (this.stopped || this.seen <= this.marked) return;
    this.sending = true;
    this.last = Date.now();
    const seq = this.seen;
    try {
      const answer = await chat.markRead(
        { room: this.room, seq, name: hasToken() ? "" : this.name },
        { timeoutMs: 10_000 },
      );
      this.known(answer.seq);
      // Lower than asked: the server has no such seq in the room (its history was replaced):
      // nothing further to mark until more is shown.
      if (answer.seq < seq) this.seen = answer.seq;
    } catch {
      // A marker is a convenience: the next message shown tries again.
      this.seen = this.seen > seq ? this.seen : this.marked;
    } finally {
      this.sending = false;
    }
    this.schedule();
  }
}
