-- Recompute qi_attempt_day (migration 0014) from the events: finished send attempts
-- (qi_attempt's event types) per local day in TZ of the attempt's time, destination and
-- outcome. Called when TZ changes or events were truncated (qi_attempt_day_sync); the
-- events' own inserts and deletes add signed counts instead.
CREATE OR REPLACE FUNCTION qi_attempt_day_fill() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
BEGIN
    DELETE FROM qi_attempt_day;
    INSERT INTO qi_attempt_day (day, destination, outcome, n)
    SELECT (e.at AT TIME ZONE v_tz)::date, e.destination,
           CASE e.type WHEN 'delivery_failed' THEN 'failed' WHEN 'delivery_dead' THEN 'dead' ELSE 'succeeded' END,
           count(*)
    FROM events e
    WHERE e.type IN ('ai_sent', 'delivered', 'delivery_failed', 'delivery_dead')
    GROUP BY 1, 2, 3;
END $$;
