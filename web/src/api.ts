// The ChatService client: one Connect transport (JSON, the Connect default) at this page's
// origin, the bearer token kept in memory only, and Send retried with the same idempotency key.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { ChatService, type ChatMessage, type Relation_Kind } from "./gen/chat/v1/chat_service_pb";

let token = "";

/** Set the token sent as `Authorization: Bearer ...` (empty: none). Never stored anywhere else. */
export function setToken(value: string): void {
  token = value.trim();
}

/** Whether a token is set: without one, calls that concern "me" name the user themselves. */
export function hasToken(): boolean {
  return token !== "";
}

/**
 * The user the token names (its `sub`), read without verifying it, to know which messages are
 * "mine" from the start: the server verifies the token, and its name wins on everything sent.
 * "" without a token, or with one that cannot be read.
 */
export function tokenName(): string {
  const payload = token.split(".")[1];
  if (!payload) return "";
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "=")), (c) =>
      c.charCodeAt(0),
    );
    const sub: unknown = JSON.parse(new TextDecoder().decode(bytes)).sub;
    return typeof sub === "string" ? sub : "";
  } catch {
    return "";
  }
}

const auth: Interceptor = (next) => (request) => {
  if (token) request.header.set("Authorization", `Bearer ${token}`);
  return next(request);
};

export const chat = createClient(
  ChatService,
  createConnectTransport({ baseUrl: location.origin, interceptors: [auth] }),
);

/** Codes after which retrying the same request cannot help. */
const TERMINAL = new Set([
  Code.Unauthenticated,
  Code.InvalidArgument,
  Code.AlreadyExists,
  Code.PermissionDenied,
]);

export function isTerminal(error: unknown): boolean {
  return error instanceof ConnectError && TERMINAL.has(error.code);
}

/** "ALREADY_EXISTS" for Code.AlreadyExists: the gRPC spelling the server and README use. */
export function codeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** One line for people: "ALREADY_EXISTS: the name alice is taken in #lobby". */
export function describe(error: unknown): string {
  if (error instanceof ConnectError) {
    return `${codeName(error.code)}: ${error.rawMessage || "request failed"}`;
  }
  return error instanceof Error ? error.message : String(error);
}

/** Sleep, or reject with the signal's reason when it is aborted. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Backoff for attempt n (0-based): 0.5 s doubling to 10 s, with ±25 % jitter. */
export function backoff(attempt: number): number {
  const base = Math.min(10_000, 500 * 2 ** attempt);
  return base * (0.75 + Math.random() * 0.5);
}

/** A random idempotency key; crypto.randomUUID exists only in secure contexts (https, localhost). */
export function newKey(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export interface Outgoing {
  sender: string;
  room: string;
  text: string;
  recipient?: string;
  action?: boolean;
  /** A reply: the id of the message (same room) this one answers. */
  replyTo?: string;
  /** An edit, delete or reaction of message `target` instead of a new message. */
  relation?: { kind: Relation_Kind; target: string; emoji?: string };
}

const SEND_ATTEMPTS = 6;

// The sends of this page, one at a time in the order they were made: a send waiting to be
// retried (over the rate, an answer lost) must not be overtaken by a later one.
let sending: Promise<unknown> = Promise.resolve();
let waiting = 0;
// A send failed: the ones queued behind it fail too, unsent, until the queue is empty (sent
// once the server was back, they went ahead of the one that failed).
let broken = false;

/**
 * Send one message, after the ones sent before it. UNAVAILABLE and RESOURCE_EXHAUSTED are
 * retried with the same key, so a retry after a lost answer posts nothing twice (the server
 * answers with the original); the wait honours the server's `retry-after-ms`. Throws the last
 * error otherwise, and then for each send already queued behind it.
 */
export function send(message: Outgoing): Promise<ChatMessage | undefined> {
  waiting++;
  const sent = sending.then(() => {
    if (broken) throw new Error("a message before it could not be sent");
    return sendNow(message);
  });
  const settled = sent.then(
    () => undefined,
    (error: unknown) => {
      // The server out of reach: what follows would go ahead of it once it is back. A
      // refusal of this message alone (a bad text, a reaction not allowed) stops nothing.
      if (unreachable(error) || broken) broken = true;
    },
  );
  sending = settled.then(() => {
    if (--waiting === 0) broken = false;
  });
  return sent;
}

async function sendNow(message: Outgoing): Promise<ChatMessage | undefined> {
  const key = newKey();
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await chat.send({ ...message, key }, { timeoutMs: 10_000 });
      return response.message;
    } catch (error) {
      if (!(error instanceof ConnectError)) throw error;
      const retriable = unreachable(error) || error.code === Code.ResourceExhausted;
      if (!retriable || attempt + 1 >= SEND_ATTEMPTS) throw error;
      const hinted = Number(error.metadata.get("retry-after-ms"));
      await sleep(hinted > 0 ? Math.min(hinted, 10_000) : backoff(attempt));
    }
  }
}

/** The server did not answer: UNAVAILABLE, or fetch itself failed (server down, network lost). */
function unreachable(error: unknown): boolean {
  return (
    error instanceof ConnectError &&
    (error.code === Code.Unavailable || (error.code === Code.Unknown && error.cause instanceof TypeError))
  );
}
