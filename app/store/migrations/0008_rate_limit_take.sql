-- Admission leases on the PostgreSQL rate-limit store (docs/leases.md): several GCRA
-- admissions of one key in one statement, `gcra_take` of app/http/ratelimit.py on the
-- database's clock, in whole microseconds. Expand only: the previous release neither
-- calls it nor changes how rate_limits is read.
--
-- Gives back p_give_back admissions (the TAT moves back p_give_back * T), decides one
-- request, and when it is admitted takes up to p_want - 1 more while p_keep stay
-- available. Returns the admissions granted (0: refused) and the TAT after - now. The
-- key's row is locked (FOR UPDATE, or inserted) before the clock is read, so requests
-- of one key serialise and each decides on its predecessor's TAT. A refusal writes
-- only when it gave admissions back.
CREATE FUNCTION rate_limit_take(p_key text, p_interval bigint, p_tolerance bigint,
                                p_want integer, p_give_back integer, p_keep integer,
                                OUT granted integer, OUT tat_after bigint)
LANGUAGE plpgsql AS $$
DECLARE
    stored timestamptz;
    now_ts timestamptz;
    held bigint;  -- the key's TAT - now after the give-back, microseconds
    base bigint;
BEGIN
    LOOP
        SELECT r.tat INTO stored FROM rate_limits AS r WHERE r.key = p_key FOR UPDATE;
        now_ts := clock_timestamp();
        IF FOUND THEN
            EXIT;
        END IF;
        -- a key without state: never refused (tau >= 0)
        granted := greatest(1, least(p_want, p_tolerance / p_interval + 1 - p_keep));
        tat_after := granted * p_interval;
        INSERT INTO rate_limits (key, tat)
        VALUES (p_key, now_ts + tat_after * interval '1 microsecond')
        ON CONFLICT (key) DO NOTHING;
        IF FOUND THEN
            RETURN;
        END IF;
        -- another statement created the row meanwhile: decide on it, locked
    END LOOP;
    held := (extract(epoch FROM stored - now_ts) * 1000000)::bigint
            - p_give_back::bigint * p_interval;
    base := greatest(held, 0);
    IF base > p_tolerance THEN
        granted := 0;
        tat_after := held;
        IF p_give_back > 0 THEN
            UPDATE rate_limits SET tat = now_ts + held * interval '1 microsecond'
             WHERE key = p_key;
        END IF;
        RETURN;
    END IF;
    granted := greatest(1, least(p_want, (p_tolerance - base) / p_interval + 1 - p_keep));
    tat_after := base + granted * p_interval;
    UPDATE rate_limits SET tat = now_ts + tat_after * interval '1 microsecond'
     WHERE key = p_key;
END
$$;
