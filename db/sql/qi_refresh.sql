-- Recompute up to p_limit dirty studies; returns how many. Concurrent callers skip.
-- (core.qi.refresh; the public views are current whether or not it ran.) Also sums the
-- attempt counts the events' triggers added since (qi_attempt_day_compact).
CREATE OR REPLACE FUNCTION qi_refresh(p_limit integer DEFAULT 20000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('hub.qi_refresh')) THEN
        RETURN 0;
    END IF;
    PERFORM qi_attempt_day_compact();
    WITH picked AS (
        SELECT d.study_id FROM qi_dirty d ORDER BY d.marked_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM qi_dirty d USING picked p WHERE d.study_id = p.study_id RETURNING d.study_id
    )
    SELECT array_agg(gone.study_id) INTO ids FROM gone;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM qi_study_fact WHERE study_id = ANY (ids);
    DELETE FROM qi_delivery_fact WHERE study_id = ANY (ids);
    INSERT INTO qi_study_fact SELECT * FROM qi_study_live WHERE study_id = ANY (ids)
        ORDER BY first_received_at, study_id;
    INSERT INTO qi_delivery_fact SELECT * FROM qi_delivery_live WHERE study_id = ANY (ids)
        ORDER BY first_received_at, study_id;
    RETURN cardinality(ids);
END $$;
