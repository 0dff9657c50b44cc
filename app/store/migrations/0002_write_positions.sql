-- Read-your-writes without Redis: each user's last write position (a WAL
-- byte offset on the primary) for as long as a replica in rotation may not
-- have replayed it. UNLOGGED: it is hot state, and a crash that loses it
-- loses only positions older than the crash, which every replica then has.
CREATE UNLOGGED TABLE write_positions (
    user_id    bigint PRIMARY KEY,
    position   bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX write_positions_expires_at ON write_positions (expires_at);
