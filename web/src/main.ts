// The grpcchat page: join a room as a name, follow it (one Subscribe stream, which also
// delivers the name's direct messages), send with Send, and switch rooms.

import { create } from "@bufbuild/protobuf";
import { chat, describe, send, setToken, type Outgoing } from "./api";
import { HELP, parse } from "./commands";
import { RoomFeed } from "./feed";
import { PresenceChange_Change, RoomInfoSchema, type Event } from "./gen/chat/v1/chat_service_pb";
import { View } from "./view";

const LOBBY = "lobby";
const ROOMS_EVERY_MS = 10_000;

const view = new View();
let feed: RoomFeed | undefined;
let members = new Set<string>();
let roomsTimer: ReturnType<typeof setInterval> | undefined;

function enter(room: string): void {
  const name = view.name.value.trim();
  if (!name) {
    view.status("enter a name first", "error");
    view.name.focus();
    return;
  }
  room = room.trim().replace(/^#/, "") || LOBBY;
  feed?.stop(); // one stream at a time: the browser allows few connections per host
  view.room.value = room;
  view.enter(room);
  members = new Set();
  view.status("connecting…", "wait");
  feed = new RoomFeed(name, room, { event: (e) => show(room, e), status: (t, k) => view.status(t, k) });
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
    case "message":
      view.showMessage(kind.value);
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
      break;
    case "joined":
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
    const { rooms } = await chat.listRooms({ pageSize: 200 });
    if (!rooms.some((r) => r.name === current)) {
      rooms.unshift(create(RoomInfoSchema, { name: current, members: members.size }));
    }
    view.setRooms(rooms, current, enter);
  } catch {
    // The room list is a convenience; the status line already tells about the connection.
  }
}

async function post(message: Outgoing): Promise<void> {
  try {
    await send(message);
  } catch (error) {
    view.status(describe(error), "error");
  }
}

function submitLine(line: string): void {
  const command = parse(line);
  if (command.kind === "none") return;
  if (command.kind === "help") return HELP.forEach((h) => view.notice(h));
  if (command.kind === "error") return view.notice(command.text, "error");
  if (!feed) {
    view.status("join a room first", "error");
    return;
  }
  const sender = feed.name;
  const room = feed.room;
  switch (command.kind) {
    case "say":
      return void post({ sender, room, text: command.text });
    case "me":
      return void post({ sender, room, text: command.text, action: true });
    case "msg":
      return void post({ sender, room: "", text: command.text, recipient: command.to });
    case "join":
      return enter(command.room);
    case "leave":
      return enter(LOBBY);
    case "who":
      return void who(command.room || room);
    case "rooms":
      return void refreshRooms();
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
