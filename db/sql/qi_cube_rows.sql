-- Studies first received in [p_from, p_to), counted per local day and hour, modality,
-- source, routed and outcome: qi_study_cube's whole days plus qi_cube_delta. The same
-- counts as grouping qi_study's rows.
CREATE OR REPLACE FUNCTION qi_cube_rows(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, hour integer, modality text, source_aet text, routed boolean, outcome text, n bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.day, c.hour::integer, c.modality, c.source_aet, c.routed, c.outcome, c.n::bigint
    FROM qi_hist_days(p_from, p_to) w
    JOIN qi_study_cube c ON c.day BETWEEN w.d1 AND w.d2
    UNION ALL
    SELECT d.day, d.hour, d.modality, d.source_aet, d.routed, d.outcome, d.sgn FROM qi_cube_delta(p_from, p_to) d
$$;
