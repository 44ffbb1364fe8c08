-- Whether an aggregate can be answered from the per-day histograms: a finite window,
-- no dimension filter and no group (the histograms are per day and stage only). Else the
-- aggregate reads every study of the window, as it always did. Immutable, so it folds to
-- a constant in the custom plans of core.qi and the other path is never run.
CREATE OR REPLACE FUNCTION qi_hist_usable(p_from timestamptz, p_to timestamptz, p_group text, p_modality text[],
                                          p_source text[], p_destination text[], p_rule text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_from IS NOT NULL AND p_to IS NOT NULL AND p_from > '-infinity' AND p_to < 'infinity'
           AND p_from < p_to AND COALESCE(p_group, 'none') = 'none'
           AND p_modality IS NULL AND p_source IS NULL AND p_destination IS NULL AND p_rule IS NULL
$$;
