-- The stages kept in the per-day histograms (qi_stage_hist.stage is a position in this
-- array): the duration columns of qi_study, in the order of qi_stage_stats.
CREATE OR REPLACE FUNCTION qi_hist_stages() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['wait_stable', 'to_ai', 'ai_round_trip', 'result_settle', 'to_destinations', 'turnaround']
$$;
