-- Where each reader of the whole event log (the relay's consumers: the live-stream
-- publisher, the webhook fan-out) has got to: every event before (created_at,
-- user_id, seq) has been handed on. docs/relay.md says why created_at orders a
-- feed safely. Expand only: the previous release neither reads nor writes it.
CREATE TABLE event_feeds (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL,
    user_id     bigint NOT NULL DEFAULT 0,
    seq         bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
