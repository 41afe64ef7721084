// A room message as the page shows it now, and how an entry of the room's log that relates to
// it (an edit, a delete, a reaction) changes it. Applying is idempotent: History and replays
// already return each message in its current state and also carry the relation entries, so
// the same change may be applied twice, and nothing may double.

import { Relation_Kind, type ChatMessage } from "./gen/chat/v1/chat_service_pb";

/** Characters of a message quoted above a reply. */
export const QUOTE_LENGTH = 60;
export const DELETED = "message deleted";

export interface Post {
  readonly id: string;
  readonly seq: bigint;
  readonly sender: string;
  readonly recipient: string;
  readonly action: boolean;
  readonly sentAt?: Date;
  readonly replyTo: string;
  text: string;
  edited: boolean;
  deleted: boolean;
  /** emoji → names, in the order each emoji was first used and each name reacted. */
  readonly reactions: Map<string, string[]>;
}

export function postOf(m: ChatMessage): Post {
  const post: Post = {
    id: m.id,
    seq: m.seq,
    sender: m.sender,
    recipient: m.recipient,
    action: m.action,
    sentAt: m.sentAt ? new Date(Number(m.sentAt.seconds) * 1000) : undefined,
    replyTo: m.replyTo,
    text: m.deleted ? "" : m.text,
    edited: m.editedAt !== undefined,
    deleted: m.deleted,
    reactions: new Map(),
  };
  if (!m.deleted) {
    for (const r of m.reactions) post.reactions.set(r.emoji, [...new Set(r.names)]);
  }
  return post;
}

/** Apply relation entry `entry` (its `relation.target` is `post`); true if `post` changed. */
export function apply(post: Post, entry: ChatMessage): boolean {
  const relation = entry.relation;
  if (!relation || post.deleted) return false; // a tombstone stays one
  const emoji = relation.emoji;
  switch (relation.kind) {
    case Relation_Kind.EDIT: {
      const changed = post.text !== entry.text || !post.edited;
      post.text = entry.text;
      post.edited = true;
      return changed;
    }
    case Relation_Kind.DELETE:
      post.deleted = true;
      post.text = "";
      post.reactions.clear();
      return true;
    case Relation_Kind.REACT: {
      const names = post.reactions.get(emoji) ?? [];
      if (!emoji || names.includes(entry.sender)) return false;
      post.reactions.set(emoji, [...names, entry.sender]);
      return true;
    }
    case Relation_Kind.UNREACT: {
      const names = post.reactions.get(emoji);
      if (!names?.includes(entry.sender)) return false;
      const left = names.filter((n) => n !== entry.sender);
      if (left.length) post.reactions.set(emoji, left);
      else post.reactions.delete(emoji);
      return true;
    }
    default:
      return false;
  }
}

/** One line of `post` for a quote: its text's start, whitespace folded. */
export function quoteText(post: Post): string {
  if (post.deleted) return DELETED;
  const flat = post.text.replace(/\s+/g, " ").trim();
  const chars = [...flat]; // by code point: an emoji is not cut in half
  return chars.length > QUOTE_LENGTH ? `${chars.slice(0, QUOTE_LENGTH).join("")}…` : flat;
}
