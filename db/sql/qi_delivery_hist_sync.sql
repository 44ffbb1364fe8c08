-- Trigger function of qi_delivery_hist_ins / _upd / _del / _trunc on qi_delivery_fact and
-- qi_delivery_hist_tz on qi_settings (migration 0014): recomputes the per-day delivery
-- histograms and counts (qi_delivery_hist_fill) of the local days whose cached rows a
-- statement changed, or all of them when TZ changed or the cache was truncated. As with
-- qi_stage_hist_sync, only qi_refresh, qi_rebuild and the loader's recaching write the
-- cache; the worker's writes only mark studies dirty.
CREATE OR REPLACE FUNCTION qi_delivery_hist_sync() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_tz text := (SELECT q.tz FROM qi_settings q);
    days date[];
BEGIN
    IF TG_TABLE_NAME = 'qi_settings' OR TG_OP = 'TRUNCATE' THEN
        PERFORM qi_delivery_hist_fill(NULL);
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT (r.first_received_at AT TIME ZONE v_tz)::date) INTO days FROM new_rows r;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT (r.first_received_at AT TIME ZONE v_tz)::date) INTO days FROM old_rows r;
    ELSE
        SELECT array_agg(DISTINCT (r.t AT TIME ZONE v_tz)::date) INTO days
        FROM (SELECT o.first_received_at AS t FROM old_rows o UNION ALL SELECT n.first_received_at FROM new_rows n) r;
    END IF;
    IF days IS NOT NULL THEN
        PERFORM qi_delivery_hist_fill(days);
    END IF;
    RETURN NULL;
END $$;
