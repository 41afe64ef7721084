// What a line typed in the message box asks for, as in the terminal client (`grpcchat join`).

export type Command =
  | { kind: "say"; text: string }
  | { kind: "me"; text: string }
  | { kind: "msg"; to: string; text: string }
  | { kind: "join"; room: string }
  | { kind: "leave" }
  | { kind: "who"; room: string }
  | { kind: "rooms" }
  | { kind: "help" }
  | { kind: "none" }
  | { kind: "error"; text: string };

export const HELP = [
  "/join ROOM — switch to a room",
  "/leave — back to #lobby",
  "/rooms — refresh the room list",
  "/who [ROOM] — who is in a room",
  "/msg NAME TEXT — a direct message, seen by NAME only",
  "/me ACTION — an action: * you ACTION",
  "//text — a line starting with /",
];

export function parse(line: string): Command {
  const text = line.trim();
  if (text === "") return { kind: "none" };
  if (!text.startsWith("/")) return { kind: "say", text: line };
  if (text.startsWith("//")) return { kind: "say", text: line.replace("//", "/") };
  const space = text.search(/\s/);
  const command = (space < 0 ? text : text.slice(0, space)).toLowerCase();
  const rest = space < 0 ? "" : text.slice(space).trim();
  switch (command) {
    case "/join":
      if (rest) return { kind: "join", room: rest.replace(/^#/, "") };
      break;
    case "/leave":
      return { kind: "leave" };
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
  }
  return { kind: "error", text: `unknown or incomplete command ${command}; /help lists them` };
}
