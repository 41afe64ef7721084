"""History in a NATS JetStream stream (`NatsStore`): several servers sharing one chat.

URL: `nats://host:4222[,host2:4222...][?stream=CHAT][&replicas=1]`. `stream` names the stream
(and the prefix of its subjects; default CHAT), `replicas` how many copies a NATS cluster keeps
(1 to 5; without it a new stream gets 1 and an existing one keeps its own). The stream is
created if missing; its epoch is a random id kept in the stream's
metadata, so it is the same for every server and every reopening of that stream.

Layout (`codec`): one stream, one subject per room, one JetStream message
per chat message, its seq in the `Chat-Seq` header.

Contiguous seqs across servers: an append publishes seq = the room's last `Chat-Seq` + 1 with
`Nats-Expected-Last-Subject-Sequence` = that last message's stream seq, so JetStream stores it
only if nothing was appended to the room meanwhile (by this process or another); otherwise it
re-reads the room's last message and tries again (at most PUBLISH_ATTEMPTS times). In this
process, appends of one room run one after another, in the order they were called (each is a
task waiting for the one before it), so they never race each other.

Idempotency: a keyed append carries `Nats-Msg-Id` = a hash of (sender, key), and the stream's
`duplicate_window` is the dedup window. JetStream judges repeats by its own clock; the contract
judges them by `sent_at`, so a repeat JetStream reports is checked against the original's
`sent_at`: outside the window it is published again under `<id>#<original's stream seq>`,
which chains each new message to the one before it. A repeat is recognised while JetStream
remembers the id: for `dedup_window` of its clock after the original, the same span as
`sent_at` in normal use (the server dates messages itself). A repeat returns the original as its
room's index shows it now; one whose original a DELETE erased and retention has since dropped
from the index too is not recognised (it is stored as a new message). The key comes first: a
reply or relation refused in its room (no such target there, or none any more) asks
JetStream whether the key is known anywhere in the stream before the refusal stands, with a
publish that expects a last `Nats-Msg-Id` no message has. JetStream checks the key before that
expectation, so it answers with the original if it knows the key and refuses the publish
otherwise: nothing is stored either way.

Retention is the engine's own, never JetStream's limits, for two reasons: a room's latest
message is kept even when expired or beyond the count (it carries `last_seq`), and a keyed
message is kept while its key may still be repeated (the original is what a repeat returns).
`read` and `rooms` skip what is out of the count window or expired by `sent_at`; a background
job purges each room's prefix that nothing needs any more (shortly after appends push a room
past its count, and every MAINTENANCE_INTERVAL for age). Only prefixes are purged, so the
messages a room holds always have contiguous seqs, and counting is arithmetic plus the few
expired ones listed in the last message's `Chat-Lates` header.

Durability: an append returns once JetStream has acknowledged the message, which means stored
by the stream's replicas, not fsynced: by default JetStream syncs to disk every two minutes,
so an OS crash or power loss can lose acknowledged messages (a process crash cannot). Run
nats-server with `sync_interval: always` (jetstream block) to fsync every write.

Connection loss: nats-py reconnects by itself (to any server of the cluster it knows), but
the store does not wait for it: while the connection is down, an append fails at once with
StoreError (one already under way within REQUEST_TIMEOUT), and `follow` ends with StoreError,
so the server reports NOT_SERVING and ends its sessions (`grpcchat.server.lifecycle`). Called
again, `follow` waits for the connection (at most REQUEST_TIMEOUT) and makes a new consumer
from the last stream seq it delivered, rather than trusting nats-py's ordered consumer to find
its way back (it may not after missed heartbeats, nats.py#510). A connection that goes silent
without closing is noticed by its pings (PING_INTERVAL, two missed).

Conversations (relations, replies, read markers):
- Relations are entries of the room's subject like any message (`rel` in the payload). Their
  effect is kept by `state.RoomState`, an index of a room's retained entries per process (id to
  current state: edited text and time, deleted, reactions; edits per message; keys), built on
  first need by reading the room's retained entries, then kept current by this process's own
  appends and by the feed, which sees every process's appends in order; when behind, it reads
  on from its last entry. Why not fold the relations at each read: a relation may come long
  after its target (a reaction to the oldest message retained), so every read would read the
  whole room. `read` returns the stream's entries with the index's current state applied. At
  most `state.MAX_INDEXED` entries are indexed in all (least recently used rooms go first).
- Validation happens against the state as of the seq the entry takes: the index is brought up
  to the room's last entry as this process knows it (the appender's hint), the relation is
  checked there (`validation`, `core.relations`), and the publish expects exactly that last
  entry; if another process appended meanwhile, JetStream refuses it, and the check runs
  again on the newer state. A refused relation publishes nothing. A repeated key is found in
  the index before a refusal is raised (the key check comes first); one JetStream reports is
  returned as the original.
- DELETE erases: JetStream messages are immutable, but one can be deleted, which overwrites
  it (STREAM.MSG.DELETE erases by default). The DELETE entry is published first, carrying what
  the tombstone and the emptied edits need (`codec.Gone`: ids, seqs, times, `action`,
  `reply_to`, stream seqs); then the target's and its edits' stream messages are erased. A
  read rebuilds them at their seqs from the index. The append is stored once published, so an
  erasing that fails is retried by the maintenance job (and any read that still finds such a
  message schedules it again); until then reads hide the text anyway. A process that dies
  between the publish and the erasing leaves the text in the stream until a read of the room
  comes by it.
- Erased entries leave gaps in the room's stream seqs that a purge does not: reads fill them
  from the index, the feed skips them (the hub's gap filling then reads the tombstone), and
  `rooms` counts them from the headers (`Chat-Before`), or from the index when a run of them
  sits where the retained entries start (see `reader.Reader.count`). The last entry of a room
  (which carries `last_seq`) is never erased: a DELETE always comes after what it erases.
- Read markers are a stream of their own, one subject per user and room keeping its last
  message (`markers`), moved forward by compare-and-set, bounded by JetStream's `max_age` and
  `max_msgs` (discarding the least recently moved). `unread` counts exactly in a room's index
  when this process has one; for any other room it reads no entries, and counts the room's
  entries after the marker that the stream still holds (its first and last messages tell),
  relations and the user's own included, as the contract allows.

Modules: `store` (the contract: `NatsStore`, made of the parts below; reads, counts, unread),
`connection` (connecting, opening the stream, NATS failures as StoreError), `appender`
(appends: contiguous seqs, keys, relations), `validation` (what a relation or reply may be;
no I/O), `indexes` (each room's index kept up to date from the stream), `state` (current state
of a room's entries; no I/O), `feed` (the RoomFeed), `maintenance` (retention: purging
prefixes), `erasure` (erasing what a DELETE removed), `window` (what retention keeps; no I/O),
`reader` (lookups in the stream), `codec` (URL, subjects, headers, payloads; no I/O),
`markers` (read markers), `cluster` (presence and direct messages across nodes).

Limits: `rooms` asks JetStream for the stream's subjects, so a page costs in proportion to the
number of rooms, not to the page; a read costs a request per message plus a binary search to
its first one; the first read or relation of a room in a process reads its retained entries
once to build its index (`unread` never does): a binary search to the first, then one ordered
consumer on the room's subject delivers them all (`reader.Reader.run`; about 0.9 s for 10,000
entries on one machine, against 2.7 s at a request each), as does an index behind by more than
`reader.FEW` entries.
"""

from grpcchat.store.nats.store import NatsStore

__all__ = ["NatsStore"]
