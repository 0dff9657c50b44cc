-- Read-your-writes survives a crash of the primary. Crash recovery empties an
-- UNLOGGED table, while a replica may still lag behind the positions it held,
-- so the users' positions are logged from now on (a small table: rows expire).
-- And the primary keeps the highest position of any write whose position the
-- shared store (Redis) did not confirm: no replica serves a read until it has
-- replayed that far. Both are additive: the previous release runs on them.
ALTER TABLE write_positions SET LOGGED;

CREATE TABLE unconfirmed_write_position (
    id        smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    position  bigint NOT NULL,
    noted_at  timestamptz NOT NULL DEFAULT now()
);
