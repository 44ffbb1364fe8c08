-- Trigger function of qi_attempt_day_ins / _del / _upd / _trunc on events and
-- qi_attempt_day_tz on qi_settings (migration 0014): keeps qi_attempt_day, the finished
-- send attempts per local day, destination and outcome, in step with the events. Events
-- are written once, so a statement adds one signed row per (day, destination, outcome)
-- it inserted (+) or deleted (-, retention's cascades), never updating a shared row:
-- concurrent workers recording attempts do not wait on each other. qi_refresh sums the
-- rows of a day into one (qi_attempt_day_compact). TZ moves the days: recomputed.
CREATE OR REPLACE FUNCTION qi_attempt_day_sync() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
BEGIN
    IF TG_TABLE_NAME = 'qi_settings' OR TG_OP = 'TRUNCATE' THEN
        PERFORM qi_attempt_day_fill();
        RETURN NULL;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO qi_attempt_day (day, destination, outcome, n)
        SELECT (e.at AT TIME ZONE v_tz)::date, e.destination,
               CASE e.type WHEN 'delivery_failed' THEN 'failed' WHEN 'delivery_dead' THEN 'dead' ELSE 'succeeded' END,
               count(*)
        FROM new_rows e
        WHERE e.type IN ('ai_sent', 'delivered', 'delivery_failed', 'delivery_dead')
        GROUP BY 1, 2, 3;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO qi_attempt_day (day, destination, outcome, n)
        SELECT (e.at AT TIME ZONE v_tz)::date, e.destination,
               CASE e.type WHEN 'delivery_failed' THEN 'failed' WHEN 'delivery_dead' THEN 'dead' ELSE 'succeeded' END,
               -count(*)
        FROM old_rows e
        WHERE e.type IN ('ai_sent', 'delivered', 'delivery_failed', 'delivery_dead')
        GROUP BY 1, 2, 3;
    END IF;
    RETURN NULL;
END $$;
