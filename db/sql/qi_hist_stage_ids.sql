-- The positions in qi_hist_stages() (qi_stage_hist.stage) of the stages asked for (NULL =
-- all). Immutable: with core.qi's custom plans it folds to a constant array, so a scan of
-- qi_stage_hist / qi_stage_hist_month reads only those stages through the index instead
-- of every stage's rows filtered afterwards (migration 0015).
CREATE OR REPLACE FUNCTION qi_hist_stage_ids(p_stages text[]) RETURNS smallint[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(array_agg(s.i::smallint ORDER BY s.i), '{}')
    FROM unnest(qi_hist_stages()) WITH ORDINALITY AS s (name, i)
    WHERE qi_wants(p_stages, s.name)
$$;
