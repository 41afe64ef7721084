// Following one room: a Subscribe stream that survives disconnects. It remembers the last
// position seen (seq, epoch) and resumes after it, so the page gets no gap and no duplicate;
// it drops anything it has already delivered, and treats a jump in live seqs as a gap to
// resume over (once), as the server's README asks of clients.

import { Code, ConnectError } from "@connectrpc/connect";
import { backoff, chat, describe, isTerminal, sleep } from "./api";
import type { Event } from "./gen/chat/v1/chat_service_pb";

const HISTORY = 50;
/** The Subscribe response header with the server's heartbeat (ms; "0": it sends none). */
const HEARTBEAT_HEADER = "grpcchat-heartbeat-ms";
/** A stream silent for two heartbeats and this margin (at most one more) is taken for dead. */
const HEARTBEAT_SLACK_MS = 5_000;
/** How many direct-message ids to remember for dropping repeats (they carry no seq). */
const SEEN_IDS = 500;

export interface FeedHandlers {
  /** One event, in order, already filtered for duplicates. */
  event(event: Event): void;
  /** "connected", "reconnecting…" or an error text. */
  status(text: string, kind: "ok" | "wait" | "error"): void;
}

class ResumeNow extends Error {}

export class RoomFeed {
  private readonly stopper = new AbortController();
  private seq = 0n;
  private epoch = "";
  private readonly seenIds: string[] = [];
  /** The seq after which we already resumed over a jump once (do not loop on a real hole). */
  private jumpedAt = -1n;
  /** How long a stream may stay silent (ms) before it is taken for dead; 0: no limit. */
  private quietLimit = 0;

  /** `heldFor` (ms): this page let go of the name in this room a moment ago, so the server
   * may still hold it for the old stream; a join refused as taken is tried again that long. */
  constructor(
    readonly name: string,
    readonly room: string,
    private readonly on: FeedHandlers,
    private readonly heldFor = 0,
  ) {}

  private started = 0;

  start(): void {
    this.started = Date.now();
    void this.run();
  }

  stop(): void {
    this.stopper.abort(new ConnectError("left the room", Code.Canceled));
  }

  get stopped(): boolean {
    return this.stopper.signal.aborted;
  }

  private async run(): Promise<void> {
    for (let attempt = 0; !this.stopped; ) {
      const call = new AbortController();
      const unlink = () => call.abort(this.stopper.signal.reason);
      this.stopper.signal.addEventListener("abort", unlink, { once: true });
      let reason = "the server ended the stream";
      // A browser sees no pings: a connection that died without a word (a laptop that slept,
      // a NAT that forgot the flow) looks like a quiet room. The server says how often it
      // writes at the least; a stream silent much longer than that is ended and resumed. The
      // limit it last said holds from the start of the next call too: the browser may send
      // that on a kept-alive connection that died the same way, and never get an answer.
      let watchdog: ReturnType<typeof setTimeout> | undefined;
      const rearm = () => {
        clearTimeout(watchdog);
        if (this.quietLimit > 0) {
          const dead = new ConnectError("the connection went silent", Code.Unavailable);
          watchdog = setTimeout(() => call.abort(dead), this.quietLimit);
        }
      };
      rearm();
      const resume = this.epoch !== "" || this.seq > 0n;
      try {
        const request = resume
          ? { name: this.name, room: this.room, after: { seq: this.seq, epoch: this.epoch } }
          : { name: this.name, room: this.room, history: HISTORY };
        const onHeader = (headers: Headers) => {
          const said = headers.get(HEARTBEAT_HEADER);
          if (said === null) return; // (a refusal may come without it: the last one holds)
          const heartbeat = Number(said);
          this.quietLimit = heartbeat > 0 ? 2 * heartbeat + Math.min(heartbeat, HEARTBEAT_SLACK_MS) : 0;
          rearm();
        };
        let gapSeen = false;
        for await (const response of chat.subscribe(request, { signal: call.signal, onHeader })) {
          rearm();
          for (const event of response.events) {
            if (event.kind.case === "joined") attempt = 0;
            if (event.kind.case === "gap") gapSeen = true;
            if (this.accept(event, gapSeen)) this.on.event(event);
          }
        }
      } catch (error) {
        if (this.stopped) return;
        if (error instanceof ResumeNow) continue;
        // A resume (or a join of what this page just left) refused because the name is taken:
        // most likely by this page's own session on a connection the server has not seen die
        // yet. It lets go in time; ask again.
        const letGo = Date.now() - this.started < this.heldFor;
        const stillHeld =
          (resume || letGo) && error instanceof ConnectError && error.code === Code.AlreadyExists;
        if (isTerminal(error) && !stillHeld) {
          this.on.status(describe(error), "error");
          this.stopper.abort(error);
          return;
        }
        reason = describe(error);
      } finally {
        clearTimeout(watchdog);
        this.stopper.signal.removeEventListener("abort", unlink);
        call.abort();
      }
      if (this.stopped) return;
      this.on.status(`reconnecting… (${reason})`, "wait");
      try {
        await sleep(backoff(attempt++), this.stopper.signal);
      } catch {
        return;
      }
    }
  }

  /** Track the position; false for an event already delivered. Throws ResumeNow on a jump. */
  private accept(event: Event, gapSeen: boolean): boolean {
    switch (event.kind.case) {
      case "message": {
        const m = event.kind.value;
        if (m.recipient !== "" || m.seq === 0n) return this.firstTime(m.id);
        if (m.room !== "" && m.room !== this.room) return false;
        if (m.epoch === this.epoch) {
          if (m.seq <= this.seq) return false;
          if (this.seq > 0n && m.seq > this.seq + 1n && !gapSeen && this.jumpedAt !== this.seq) {
            this.jumpedAt = this.seq; // a hole without a HistoryGap: resume over it, once
            throw new ResumeNow();
          }
        }
        this.seq = m.seq;
        this.epoch = m.epoch;
        return true;
      }
      case "gap": {
        const gap = event.kind.value;
        if (gap.firstSeq === 0n && gap.lastSeq === 0n) {
          this.seq = 0n; // the whole history was replaced: a new epoch follows
          this.epoch = "";
        }
        return true;
      }
      case "joined": {
        const at = event.kind.value.position;
        this.on.status("connected", "ok");
        if (at && (at.epoch !== this.epoch || at.seq > this.seq)) {
          this.seq = at.seq;
          this.epoch = at.epoch;
        }
        return true;
      }
      default:
        return true;
    }
  }

  private firstTime(id: string): boolean {
    if (id === "") return true;
    if (this.seenIds.includes(id)) return false;
    this.seenIds.push(id);
    if (this.seenIds.length > SEEN_IDS) this.seenIds.shift();
    return true;
  }
}
