// What a line typed in the message box asks for, as in the terminal client (`grpcchat join`).
// A message is named by its handle N: its seq in the room, shown dimmed before it.

export type Change = "edit" | "delete" | "react" | "unreact";

export type Command =
  | { kind: "say"; text: string }
  | { kind: "me"; text: string }
  | { kind: "msg"; to: string; text: string }
  | { kind: "reply"; seq: bigint; text: string }
  /** An edit, delete or reaction of message `seq` (undefined: your last message). `text` is the
   * new text of an edit, the emoji of a reaction, empty for a delete. */
  | { kind: "change"; change: Change; seq?: bigint; text: string }
  | { kind: "join"; room: string }
  | { kind: "leave"; room: string }
  | { kind: "who"; room: string }
  | { kind: "rooms" }
  | { kind: "help" }
  | { kind: "none" }
  | { kind: "error"; text: string };

export const HELP = [
  "/join ROOM — switch to a room",
  "/leave — back to #lobby",
  "/rooms — refresh the room list (with your unread counts)",
  "/who [ROOM] — who is in a room",
  "/msg NAME TEXT — a direct message, seen by NAME only",
  "/me ACTION — an action: * you ACTION",
  "/reply N TEXT — answer message N (the dimmed number before it)",
  "/edit [N] TEXT — new text for your message N (default: your last one)",
  "/delete [N] — delete your message N (default: your last one)",
  "/react N EMOJI — react to message N; /unreact N EMOJI takes it back",
  "//text — a line starting with /",
];

/** A handle as typed: digits only, not zero. */
function handle(word: string): bigint | undefined {
  return /^\d{1,19}$/.test(word) && !/^0+$/.test(word) ? BigInt(word) : undefined;
}

export function parse(line: string): Command {
  const text = line.trim();
  if (text === "") return { kind: "none" };
  if (!text.startsWith("/")) return { kind: "say", text: line };
  if (text.startsWith("//")) return { kind: "say", text: line.replace("//", "/") };
  const space = text.search(/\s/);
  const command = (space < 0 ? text : text.slice(0, space)).toLowerCase();
  const rest = space < 0 ? "" : text.slice(space).trim();
  // "N REST": a handle and what follows it (REST may be empty).
  const [first = "", tail = ""] = /^(\S*)\s*([\s\S]*)$/.exec(rest)?.slice(1) ?? [];
  const seq = handle(first);
  switch (command) {
    case "/join": {
      const room = rest.replace(/^#/, "");
      if (room) return { kind: "join", room };
      break;
    }
    case "/leave":
      return { kind: "leave", room: rest.replace(/^#/, "") };
    case "/who":
      return { kind: "who", room: rest.replace(/^#/, "") };
    case "/rooms":
      return { kind: "rooms" };
    case "/help":
      return { kind: "help" };
    case "/me":
      if (rest) return { kind: "me", text: rest };
      break;
    case "/msg": {
      const match = /^(\S+)\s+([\s\S]+)$/.exec(rest);
      if (match) return { kind: "msg", to: match[1], text: match[2] };
      break;
    }
    case "/reply":
      if (seq !== undefined && tail) return { kind: "reply", seq, text: tail };
      break;
    case "/edit":
      // "/edit 12 new text" edits 12; "/edit new text" your last one. "/edit 12" alone is
      // incomplete, as in the terminal client: sent, it would make a message read "12".
      if (seq !== undefined) {
        if (tail) return { kind: "change", change: "edit", seq, text: tail };
        break;
      }
      if (rest) return { kind: "change", change: "edit", text: rest };
      break;
    case "/delete":
      if (!rest) return { kind: "change", change: "delete", text: "" };
      if (seq !== undefined && !tail) return { kind: "change", change: "delete", seq, text: "" };
      break;
    case "/react":
    case "/unreact":
      if (seq !== undefined && tail && !/\s/.test(tail)) {
        return { kind: "change", change: command === "/react" ? "react" : "unreact", seq, text: tail };
      }
      break;
  }
  return { kind: "error", text: `unknown or incomplete command ${command}; /help lists them` };
}
