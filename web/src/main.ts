// The grpcchat page: join a room as a name, follow it (one Subscribe stream, which also
// delivers the name's direct messages), send with Send, and switch rooms. Edits, deletes and
// reactions arrive as entries of the room's log and change the line of the message they name;
// what is shown is marked read.

import { create } from "@bufbuild/protobuf";
import { chat, describe, hasToken, send, setToken, tokenName, type Outgoing } from "./api";
import { HELP, parse, type Change } from "./commands";
import { RoomFeed } from "./feed";
import {
  PresenceChange_Change,
  Relation_Kind,
  RoomInfoSchema,
  type ChatMessage,
  type Event,
} from "./gen/chat/v1/chat_service_pb";
import { ReadMarker } from "./reading";
import { postOf, type Post } from "./thread";
import { Typists, typingLine } from "./typing";
import { View } from "./view";

const LOBBY = "lobby";
const ROOMS_EVERY_MS = 10_000;
/** Entries read at most, on entering a room, of the unread ones before its replay. */
const UNREAD_PAGE = 200;

const view = new View({ react: toggleReaction, handle: (post) => startReply(post) });
let feed: RoomFeed | undefined;
/** Whom the feed holds the name for, and where ("name\nroom"). */
let feedWho = "";
let marker: ReadMarker | undefined;
/** Whether the current feed's first join is complete (its replay is over). */
let joinedOnce = false;
let members = new Set<string>();
let roomsTimer: ReturnType<typeof setInterval> | undefined;
const typists = new Typists((names) => view.setTyping(typingLine(names)));

/** When this page last let go of each name in each room ("name\nroom" -> ms). */
const leftAt = new Map<string, number>();
/** How long after letting go of a name in a room the server may still hold it (its stream not
 * seen closed yet): a join of it then refused as taken is tried again for this long. */
const LET_GO_MS = 10_000;

function enter(room: string): void {
  const name = view.name.value.trim();
  if (!name) {
    view.status("enter a name first", "error");
    view.name.focus();
    return;
  }
  room = room.trim().replace(/^#/, "") || LOBBY;
  // Who the server holds the name for: with a token, the token's user.
  const who = `${tokenName() || name}\n${room}`;
  if (feed && !feed.stopped && feedWho === who) {
    // Already there (a second click, /join of this room): a new stream would find the
    // name still held by this one, and be refused as taken.
    view.message.focus();
    return;
  }
  const now = Date.now();
  for (const [key, at] of leftAt) if (now - at >= LET_GO_MS) leftAt.delete(key);
  if (feed && !feed.stopped) leftAt.set(feedWho, now);
  const stillHeldFor = LET_GO_MS - (now - (leftAt.get(who) ?? -Infinity));
  feedWho = who;
  feed?.stop(); // one stream at a time: the browser allows few connections per host
  marker?.stop();
  typists.clear();
  view.room.value = room;
  view.enter(room);
  // Who "me" is: with a token, the token's name (the server's answers to sends confirm it);
  // without, the name box.
  view.me = tokenName() || name;
  members = new Set();
  joinedOnce = false;
  marker = new ReadMarker(name, room);
  view.status("connecting…", "wait");
  feed = new RoomFeed(
    name,
    room,
    {
      event: (e) => show(room, e),
      status: (text, kind) => {
        view.status(text, kind);
        if (kind === "error") clearInterval(roomsTimer); // the feed stopped for good
      },
    },
    Math.max(stillHeldFor, 0),
  );
  feed.start();
  // Members and rooms are asked for once the join is complete (the "joined" event): asked now,
  // the answer could come after it and miss this very session.
  clearInterval(roomsTimer);
  roomsTimer = setInterval(() => void refreshRooms(), ROOMS_EVERY_MS);
  view.message.focus();
}

function show(room: string, event: Event): void {
  if (feed?.room !== room) return; // a late event of a room already left
  const { kind } = event;
  switch (kind.case) {
    case "message": {
      const m = kind.value;
      view.showMessage(m);
      if (!m.relation) typists.stopped(m.sender); // sent: no longer typing
      if (m.seq > 0n && !m.recipient) marker?.shown(m.seq);
      break;
    }
    case "typing":
      if ((kind.value.room || LOBBY) === room && kind.value.name !== view.me) typists.notice(kind.value);
      break;
    case "read":
      if ((kind.value.room || LOBBY) === room) marker?.known(kind.value.seq);
      break;
    case "presence": {
      const { name, change } = kind.value;
      if (change === PresenceChange_Change.JOINED) {
        members.add(name);
        view.notice(`${name} joined #${room}`, "presence");
      } else if (change === PresenceChange_Change.LEFT) {
        members.delete(name);
        view.notice(`${name} left #${room}`, "presence");
      }
      view.setMembers(members);
      break;
    }
    case "summary": {
      const s = kind.value;
      view.notice(`${s.joined} joined, ${s.left} left; ${s.members} in #${room}`, "presence");
      void refreshMembers(room);
      break;
    }
    case "gap":
      view.notice(`history truncated: ${kind.value.reason || "some history is no longer available"}`, "gap");
      if (kind.value.firstSeq === 0n && kind.value.lastSeq === 0n) {
        // The whole history was replaced: numbers start again, naming other messages.
        view.forget();
        marker?.reset();
      }
      break;
    case "joined":
      marker?.known(kind.value.readSeq);
      // Entering the room (not a resume): show where the messages not read yet start.
      if (!joinedOnce) void showUnread(room, kind.value.readSeq, kind.value.position?.seq ?? 0n);
      joinedOnce = true;
      members = new Set(kind.value.members);
      view.setMembers(members);
      if (kind.value.memberCount > members.size) void refreshMembers(room); // a big room's sample
      void refreshRooms();
      break;
    case "left":
      view.notice(`left #${kind.value.room}`);
      break;
    case "refused":
      view.notice(`#${kind.value.room}: ${kind.value.code}: ${kind.value.reason}`, "error");
      view.status(`${kind.value.code}: ${kind.value.reason}`, "error");
      break;
  }
}

/** Entering `room`: the unread messages from before the replay too, if more arrived than it
 * holds (the latest UNREAD_PAGE entries of them at most), then the divider above the first;
 * only then is what is shown marked read. */
async function showUnread(room: string, readSeq: bigint, lastSeq: bigint): Promise<void> {
  const shownMarker = marker;
  const before = view.firstSeq() ?? lastSeq + 1n;
  if (readSeq > 0n && before > readSeq + 1n) {
    try {
      const { messages } = await chat.history(
        { room, afterSeq: readSeq, beforeSeq: before, limit: UNREAD_PAGE, newestFirst: true },
        { timeoutMs: 10_000 },
      );
      if (feed?.room !== room || marker !== shownMarker) return; // left meanwhile
      const oldest = messages.at(-1)?.seq ?? readSeq + 1n;
      if (oldest > readSeq + 1n) view.notice("more unread messages came before these", "gap");
      view.showEarlier(messages.reverse());
    } catch (error) {
      if (marker !== shownMarker) return;
      view.notice(`could not read the unread messages: ${describe(error)}`, "error");
      view.markUnread(readSeq, view.me);
      marker?.freeze(); // not shown, so not read
      return;
    }
  }
  view.markUnread(readSeq, view.me);
  marker?.release();
}

async function refreshMembers(room: string): Promise<void> {
  try {
    const names: string[] = [];
    let pageToken = "";
    do {
      const page = await chat.listMembers({ room, pageSize: 1000, pageToken });
      names.push(...page.members);
      pageToken = page.nextPageToken;
    } while (pageToken && names.length < 10_000);
    if (feed?.room !== room) return;
    members = new Set(names);
    view.setMembers(members);
  } catch (error) {
    view.notice(`members of #${room}: ${describe(error)}`, "error");
  }
}

/** /who: the current room's list is refreshed in place; another room's is told as a notice. */
async function who(room: string): Promise<void> {
  if (room === feed?.room) return refreshMembers(room);
  try {
    const page = await chat.listMembers({ room, pageSize: 1000 });
    const more = page.total > page.members.length ? ` (${page.total} in all)` : "";
    view.notice(`#${room}: ${page.members.join(", ") || "nobody"}${more}`);
  } catch (error) {
    view.notice(`members of #${room}: ${describe(error)}`, "error");
  }
}

async function refreshRooms(): Promise<void> {
  const current = feed?.room ?? LOBBY;
  try {
    // With a token the server knows whose unread counts to give; without, the name says.
    const name = hasToken() || !feed ? "" : feed.name;
    const { rooms } = await chat.listRooms({ pageSize: 200, name });
    if (!rooms.some((r) => r.name === current)) {
      rooms.unshift(create(RoomInfoSchema, { name: current, members: members.size }));
    }
    view.setRooms(rooms, current, enter);
  } catch {
    // The room list is a convenience; the status line already tells about the connection.
  }
}

/** Send; a refusal is told in the log (the status line tells the stream's state). `typed`:
 * the line as typed, put back in the empty message box if the send fails, not to be lost. */
async function post(message: Outgoing, what = "", typed?: string): Promise<void> {
  try {
    const sent = await send(message);
    if (sent?.sender && sent.sender !== view.me) view.me = sent.sender; // the token's name
  } catch (error) {
    const quoted = typed === undefined ? "" : ` — ${JSON.stringify(typed)}`;
    view.notice(`${what || "not sent"}: ${describe(error)}${quoted}`, "error");
    if (typed !== undefined && view.message.value === "") view.message.value = typed;
  }
}

const RELATION: Record<Change, Relation_Kind> = {
  edit: Relation_Kind.EDIT,
  delete: Relation_Kind.DELETE,
  react: Relation_Kind.REACT,
  unreact: Relation_Kind.UNREACT,
};

/** Message `seq` of the room: as shown, or asked of the server (older than what is shown). */
async function messageAt(room: string, seq: bigint): Promise<Post> {
  const shown = view.at(seq);
  if (shown) return shown;
  let found: ChatMessage | undefined;
  try {
    [found] = (await chat.history({ room, afterSeq: seq - 1n, limit: 1 }, { timeoutMs: 10_000 })).messages;
  } catch (error) {
    throw new Error(describe(error));
  }
  if (!found || found.seq !== seq) throw new Error(`no message ${seq} in #${room} (it may be past retention)`);
  if (found.relation) throw new Error(`${seq} in #${room} is an edit, delete or reaction, not a message`);
  return postOf(found);
}

/** /edit, /delete, /react, /unreact of message `seq` (none: the user's last message). */
async function changeMessage(
  room: string,
  change: Change,
  seq: bigint | undefined,
  text: string,
  typed?: string,
): Promise<void> {
  let target: Post | undefined;
  try {
    target = seq === undefined ? view.lastOf(view.me) : await messageAt(room, seq);
  } catch (error) {
    if (typed !== undefined && view.message.value === "") view.message.value = typed;
    return view.notice(`/${change}: ${describe(error)}`, "error");
  }
  if (!target) return view.notice(`no message of yours in #${room} to ${change}; /${change} N names one`, "error");
  const reaction = change === "react" || change === "unreact";
  const relation = { kind: RELATION[change], target: target.id, emoji: reaction ? text : "" };
  await post({ sender: view.me, room, text: change === "edit" ? text : "", relation }, `/${change}`, typed);
}

async function reply(room: string, seq: bigint, text: string, typed: string): Promise<void> {
  let target: Post;
  try {
    target = await messageAt(room, seq);
  } catch (error) {
    if (view.message.value === "") view.message.value = typed;
    return view.notice(`/reply: ${describe(error)}`, "error");
  }
  await post({ sender: view.me, room, text, replyTo: target.id }, "/reply", typed);
}

/** A reaction chip was clicked: the same emoji from the user, or taken back if it is theirs. */
function toggleReaction(target: Post, emoji: string): void {
  if (!feed) return;
  const mine = target.reactions.get(emoji)?.includes(view.me) ?? false;
  void changeMessage(feed.room, mine ? "unreact" : "react", target.seq, emoji);
}

/** A message's handle was clicked: start a reply to it. */
function startReply(target: Post): void {
  if (view.message.value.trim() === "") view.message.value = `/reply ${target.seq} `;
  view.message.focus();
}

/** A message's length as the server counts it (code points), and its limit. */
const MAX_TEXT = 4096;

function submitLine(line: string): void {
  const command = parse(line);
  if (command.kind === "none") return;
  if (command.kind === "help") return HELP.forEach((h) => view.notice(h));
  if (command.kind === "error") return view.notice(command.text, "error");
  if (command.kind === "join") return enter(command.room);
  if (command.kind === "rooms") return void refreshRooms();
  if (command.kind === "leave" && (!feed || feed.stopped)) return enter(LOBBY); // a way out
  if (command.kind === "who" && command.room) return void who(command.room);
  if (!feed || feed.stopped) {
    // Not in a room (never joined, or the join was refused): sent anyway, the line went to a
    // room this page does not show.
    view.message.value = line;
    view.status("not in a room: join one first", "error");
    return;
  }
  if ("text" in command && [...command.text].length > MAX_TEXT) {
    // The box no longer cuts a paste short without a word (its maxlength counted UTF-16).
    view.message.value = line;
    view.notice(`not sent: the message is ${[...command.text].length} characters long; the limit is ${MAX_TEXT}`, "error");
    return;
  }
  const sender = feed.name;
  const room = feed.room;
  switch (command.kind) {
    case "say":
      return void post({ sender, room, text: command.text }, "", line);
    case "me":
      return void post({ sender, room, text: command.text, action: true }, "/me", line);
    case "msg":
      return void post({ sender, room: "", text: command.text, recipient: command.to }, "/msg", line);
    case "reply":
      return void reply(room, command.seq, command.text, line);
    case "change":
      return void changeMessage(room, command.change, command.seq, command.text, line);
    case "leave":
      if (command.room && command.room !== room) {
        return view.notice(`not in #${command.room}: this page follows one room, #${room}`, "error");
      }
      return enter(LOBBY);
    case "who":
      return void who(room);
  }
}

view.joinForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(view.token.value);
  enter(view.room.value);
});

view.compose.addEventListener("submit", (e) => {
  e.preventDefault();
  const line = view.message.value;
  view.message.value = "";
  submitLine(line);
});

view.message.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    view.compose.requestSubmit();
  }
});

// ?name=NAME&room=ROOM fills the form and joins at once (a token is never read from the URL).
const params = new URLSearchParams(location.search);
view.name.value = params.get("name") ?? view.name.value;
view.room.value = params.get("room") ?? (view.room.value || LOBBY);
if (view.name.value.trim()) enter(view.room.value);
else view.status("not connected: enter a name and join", "wait");
