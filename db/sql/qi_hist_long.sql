-- Whether a window is long enough for the per-day tables to pay: from HIST_MIN_DAYS days.
-- Over a short window reading its rows is as fast as merging the days' histograms and
-- deltas (bench/RESULTS.md, issue 19 goal 3), so the aggregates whose per-day path is
-- not clearly faster there (qi_delivery_times, qi_ai_outcomes, qi_attempt_failures,
-- qi_delivery_outcomes) keep the plain one. Both paths give the same numbers; this is
-- about time only. Immutable, so it folds to a constant in core.qi's custom plans.
CREATE OR REPLACE FUNCTION qi_hist_long(p_from timestamptz, p_to timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_to - p_from >= interval '60 days'
$$;
