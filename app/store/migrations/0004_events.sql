-- The event log (an outbox): every change a user makes writes its events in
-- the same transaction. `seq` numbers one user's events 1, 2, 3 ... in the
-- order their transactions committed, with no holes: it is taken from
-- users.event_seq, whose row lock the writing transaction holds until it
-- commits (see docs/events.md). Expand only: the previous release neither
-- reads nor writes these.
ALTER TABLE users ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;

-- One row per statement and type: a batch's lines are one row of events
-- seq .. last_seq, `data` an array of their objects (one element per event).
CREATE TABLE events (
    -- No foreign key: its check would run for every event row written. Deleting
    -- a user deletes their events in the same transaction, under the user's lock.
    user_id       bigint NOT NULL,
    seq           bigint NOT NULL,        -- the row's first event
    last_seq      bigint NOT NULL,        -- its last: seq unless the row holds several
    type          text NOT NULL,
    conversation  bigint,                 -- the conversation's rid, or NULL
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    data          jsonb NOT NULL,         -- each event's object as stored (docs/events.md)
    PRIMARY KEY (user_id, seq)
);
-- The filters' keyset scans: by type, and by conversation (then type). Each orders
-- by its own expression of seq, which its queries order by: no other index (the
-- primary key above all) gives that order, so no plan can walk the whole log to
-- find a filter's few rows.
CREATE INDEX events_user_type_idx ON events (user_id, type, (seq + 0));
CREATE INDEX events_user_conversation_idx ON events (user_id, conversation, type, (seq - 0))
    WHERE conversation IS NOT NULL;
-- Retention: the purge takes the oldest first.
CREATE INDEX events_created_at_idx ON events (created_at);
