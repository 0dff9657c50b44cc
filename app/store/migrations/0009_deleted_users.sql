-- Users deleted whose events are still to be purged (docs/events.md): deleting a user
-- removes what the API can reach in its own transaction, and records the user here; the
-- janitor then deletes their events in bounded batches, outside any request, so a user
-- with millions of events can be deleted within the statement timeout. Expand only: the
-- previous release deletes events in the user's deletion and never reads this table.
CREATE TABLE deleted_users (
    user_id     bigint PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
