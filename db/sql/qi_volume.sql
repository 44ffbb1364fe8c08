-- Studies received per bucket and group.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_volume(p_from timestamptz, p_to timestamptz, p_grain text DEFAULT 'day',
                                     p_group text DEFAULT 'none', p_modality text[] DEFAULT NULL,
                                     p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                     p_rule text[] DEFAULT NULL)
RETURNS TABLE (bucket date, bucket_start timestamptz, grp text, studies bigint)
LANGUAGE sql STABLE AS $$
    SELECT a.bucket, a.bucket::timestamp AT TIME ZONE q.tz, a.grp, a.studies
    FROM (
        -- without filters, ungrouped or by modality or source: from the per-day counts
        -- (qi_cube_rows), same numbers
        SELECT qi_bucket(p_grain, c.day, date_trunc('week', c.day)::date, date_trunc('month', c.day)::date) AS bucket,
               CASE p_group WHEN 'modality' THEN COALESCE(c.modality, '(none)')
                            WHEN 'source_aet' THEN COALESCE(c.source_aet, '(none)') ELSE 'all' END AS grp,
               sum(c.n)::bigint AS studies
        FROM qi_cube_rows(p_from, p_to) c
        WHERE qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule) AND p_group IN ('none', 'modality', 'source_aet')
        GROUP BY 1, 2
        HAVING sum(c.n) > 0
        UNION ALL
        SELECT qi_bucket(p_grain, s.received_day, s.received_week, s.received_month) AS bucket,
               g.grp, count(*) AS studies
        FROM qi_filtered_studies(p_from, p_to, p_modality, p_source, p_destination, p_rule) s
        CROSS JOIN LATERAL unnest(qi_group_keys(p_group, s.modality, s.source_aet, s.destinations, s.rules)) AS g (grp)
        WHERE NOT (qi_hist_usable(p_from, p_to, 'none', p_modality, p_source, p_destination, p_rule) AND p_group IN ('none', 'modality', 'source_aet'))
        GROUP BY 1, 2
    ) a
    CROSS JOIN qi_settings q
    ORDER BY 1, 3
$$;
