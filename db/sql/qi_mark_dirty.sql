-- Statement trigger function of the triggers qi_dirty_ins / qi_dirty_upd / qi_dirty_del
-- on studies, series and routing_jobs (the triggers and the qi_dirty table are schema:
-- migration 0002): puts every touched study in qi_dirty. Writers upsert (DO UPDATE,
-- which locks the row until they commit); qi_refresh deletes with SKIP LOCKED before
-- recomputing, so a change that commits during a refresh always leaves its study dirty.
CREATE OR REPLACE FUNCTION qi_mark_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'studies' THEN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO qi_dirty (study_id) SELECT DISTINCT id FROM old_rows
            ON CONFLICT (study_id) DO UPDATE SET marked_at = EXCLUDED.marked_at;
        ELSE
            INSERT INTO qi_dirty (study_id) SELECT DISTINCT id FROM new_rows
            ON CONFLICT (study_id) DO UPDATE SET marked_at = EXCLUDED.marked_at;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO qi_dirty (study_id) SELECT DISTINCT study_id FROM old_rows
        ON CONFLICT (study_id) DO UPDATE SET marked_at = EXCLUDED.marked_at;
    ELSE
        INSERT INTO qi_dirty (study_id) SELECT DISTINCT study_id FROM new_rows
        ON CONFLICT (study_id) DO UPDATE SET marked_at = EXCLUDED.marked_at;
    END IF;
    RETURN NULL;
END $$;
