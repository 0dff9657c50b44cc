-- Webhooks (docs/webhooks.md): each user's endpoints, one delivery per event and
-- endpoint, and each endpoint's circuit breaker, shared by every relay. A user's
-- deletion removes their endpoints and, with them, the deliveries. Expand only:
-- the previous release neither reads nor writes these.
CREATE TABLE webhook_endpoints (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rid                  bigint NOT NULL,           -- public id: we_<hex>
    user_id              bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    url                  text NOT NULL,
    events               text[] NOT NULL,           -- types or prefixes: line.created, line.*, *
    description          text,
    secret               text NOT NULL,             -- whsec_<base64>
    previous_secret      text,                      -- signs beside it until previous_until
    previous_until       timestamptz,
    disabled             boolean NOT NULL DEFAULT false,
    disabled_reason      text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    -- The breaker: failures in a row, since when, and until when only one probe goes.
    failures             integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    open_until           timestamptz
);
CREATE UNIQUE INDEX webhook_endpoints_rid_key ON webhook_endpoints (rid);
CREATE INDEX webhook_endpoints_user_id_id_idx ON webhook_endpoints (user_id, id);

CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rid              bigint NOT NULL,               -- public id: wd_<hex>
    endpoint_id      bigint NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         text NOT NULL,                 -- evt_...: the webhook-id
    body             text NOT NULL,                 -- the event object's JSON, as sent
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,    -- attempts begun (a claim is one)
    next_attempt_at  timestamptz,                   -- pending: due then (or its lease ends)
    claim            bigint,                        -- the attempt under way's token
    response_status  integer,
    error            text,
    duration_ms      integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX webhook_deliveries_rid_key ON webhook_deliveries (rid);
CREATE INDEX webhook_deliveries_endpoint_id_id_idx ON webhook_deliveries (endpoint_id, id);
-- The relays' claims: the due ones, soonest first.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
-- The purge of finished deliveries, oldest first.
CREATE INDEX webhook_deliveries_done_idx ON webhook_deliveries (updated_at)
    WHERE status <> 'pending';
