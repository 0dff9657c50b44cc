-- Read-your-writes survives a crash of the primary. Crash recovery empties an
-- UNLOGGED table, while a replica may still lag behind the positions it held,
-- so the users' positions are logged from now on (a small table: rows expire).
-- And while a write's position may be missing from the shared store (Redis
-- did not confirm it), every worker of every instance reads from the primary
-- until `until`: one row, read by each worker's replica monitor. `prev_until`
-- and `set_at` tell what it held a moment ago (app/repo/replication.py).
-- Both are additive: the previous release runs on them.
ALTER TABLE write_positions SET LOGGED;

CREATE TABLE replica_reads_hold (
    id          smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    until       timestamptz NOT NULL,
    prev_until  timestamptz NOT NULL,
    set_at      timestamptz NOT NULL
);
INSERT INTO replica_reads_hold VALUES (1, 'epoch', 'epoch', 'epoch');
