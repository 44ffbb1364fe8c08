-- Histogram of one stage: bins of p_bin_s seconds; values >= p_max_s share the last
-- bin (bin_end = Infinity).
-- Without filters, from the per-day histograms (qi_stage_histogram_hist, same counts).
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_stage_histogram(p_stage text, p_bin_s double precision, p_max_s double precision,
                                              p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                              p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                              p_rule text[] DEFAULT NULL)
RETURNS TABLE (bin_start double precision, bin_end double precision, n bigint)
LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_stage_histogram_hist(p_stage, p_bin_s, p_max_s, p_from, p_to)
    WHERE qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule)
    UNION ALL
    SELECT h.lo, CASE WHEN h.lo >= p_max_s THEN 'Infinity'::double precision ELSE h.lo + p_bin_s END,
           count(*)
    FROM (
        SELECT CASE WHEN x.v >= p_max_s THEN p_max_s ELSE floor(x.v / p_bin_s) * p_bin_s END AS lo
        FROM (
            SELECT CASE p_stage WHEN 'wait_stable' THEN s.wait_stable_s WHEN 'to_ai' THEN s.to_ai_s
                                WHEN 'ai_round_trip' THEN s.ai_round_trip_s WHEN 'result_settle' THEN s.result_settle_s
                                WHEN 'to_destinations' THEN s.to_destinations_s WHEN 'turnaround' THEN s.turnaround_s
                   END AS v
            FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        ) x
        WHERE x.v IS NOT NULL
    ) h
    WHERE NOT qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule)
    GROUP BY h.lo
    ORDER BY 1
$$;
