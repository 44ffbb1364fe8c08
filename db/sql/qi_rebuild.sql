-- Recompute every study (after a bulk load, or to repair); returns the study count.
-- (core.qi.rebuild)
CREATE OR REPLACE FUNCTION qi_rebuild() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('hub.qi_refresh'));
    DELETE FROM qi_dirty WHERE study_id IN (SELECT study_id FROM qi_dirty FOR UPDATE SKIP LOCKED);
    DELETE FROM qi_study_fact;
    DELETE FROM qi_delivery_fact;
    -- in arrival order, so that a date range reads neighbouring pages
    INSERT INTO qi_study_fact SELECT * FROM qi_study_live ORDER BY first_received_at, study_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO qi_delivery_fact SELECT * FROM qi_delivery_live ORDER BY first_received_at, study_id;
    RETURN n;
END $$;
