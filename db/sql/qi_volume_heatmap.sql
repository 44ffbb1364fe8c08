-- Studies received per ISO weekday (1 = Monday) and local hour of day.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_volume_heatmap(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                             p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                             p_rule text[] DEFAULT NULL)
RETURNS TABLE (isodow integer, hour integer, studies bigint)
LANGUAGE sql STABLE AS $$
    -- without filters: from the per-day counts (qi_cube_rows), same numbers
    SELECT EXTRACT(isodow FROM c.day)::integer, c.hour, sum(c.n)::bigint
    FROM qi_cube_rows(p_from, p_to) c
    WHERE qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule)
    GROUP BY 1, 2
    HAVING sum(c.n) > 0
    UNION ALL
    SELECT s.received_isodow, s.received_hour, count(*)
    FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
    WHERE NOT qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule)
    GROUP BY 1, 2
    ORDER BY 1, 2
$$;
