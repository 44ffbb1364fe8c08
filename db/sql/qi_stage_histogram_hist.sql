-- qi_stage_histogram without filters, from the per-day histograms: a histogram bucket
-- whose lowest and highest possible values fall in the same bin counts as a whole (the
-- bin is monotonic in the value); the values of the others, and qi_hist_delta's, are
-- binned one by one. Same bins and counts as binning every study. The counts come from
-- qi_hist_counts: over whole calendar months from qi_stage_hist_month (migration 0015),
-- where only the buckets split by a bin read their days' values. Called by
-- qi_stage_histogram.
CREATE OR REPLACE FUNCTION qi_stage_histogram_hist(p_stage text, p_bin_s double precision, p_max_s double precision,
                                                   p_from timestamptz, p_to timestamptz)
RETURNS TABLE (bin_start double precision, bin_end double precision, n bigint)
LANGUAGE sql STABLE AS $$
    WITH b AS (
        SELECT qi_hist_bounds() AS th, array_position(qi_hist_stages(), p_stage)::smallint AS stage
    ), h AS (
        SELECT h.day, h.d_last, h.hb, h.n, h.vals,
               CASE WHEN h.hb >= 1 THEN b.th[h.hb] END AS lo_b,
               CASE WHEN h.hb >= 1 AND h.hb < cardinality(b.th) THEN b.th[h.hb + 1] END AS hi_b
        FROM b CROSS JOIN qi_hist_counts(p_from, p_to, 'all', qi_hist_stage_ids(ARRAY[p_stage])) h
    ), x AS (
        SELECT CASE WHEN h.lo_b >= p_max_s THEN p_max_s ELSE floor(h.lo_b / p_bin_s) * p_bin_s END AS lo, h.n::bigint AS n
        FROM h
        WHERE h.lo_b IS NOT NULL
          AND (h.lo_b >= p_max_s OR (h.hi_b IS NOT NULL AND h.hi_b < p_max_s
                                     AND floor(h.lo_b / p_bin_s) = floor(h.hi_b / p_bin_s)))
        UNION ALL
        SELECT CASE WHEN u.v >= p_max_s THEN p_max_s ELSE floor(u.v / p_bin_s) * p_bin_s END, 1
        FROM h
        CROSS JOIN LATERAL (SELECT h.vals WHERE h.vals IS NOT NULL
                            UNION ALL  -- a month's bucket: its days' values
                            SELECT v.vals FROM b JOIN qi_stage_hist v ON v.stage = b.stage
                            WHERE h.vals IS NULL AND v.bucket = h.hb AND v.day BETWEEN h.day AND h.d_last) hv
        CROSS JOIN LATERAL unnest(hv.vals) AS u (v)
        WHERE NOT (h.lo_b IS NOT NULL
                   AND (h.lo_b >= p_max_s OR (h.hi_b IS NOT NULL AND h.hi_b < p_max_s
                                              AND floor(h.lo_b / p_bin_s) = floor(h.hi_b / p_bin_s))))
        UNION ALL
        SELECT CASE WHEN d.v >= p_max_s THEN p_max_s ELSE floor(d.v / p_bin_s) * p_bin_s END, d.sgn
        FROM b CROSS JOIN qi_hist_delta(p_from, p_to) d WHERE d.stage = b.stage
    )
    SELECT x.lo, CASE WHEN x.lo >= p_max_s THEN 'Infinity'::double precision ELSE x.lo + p_bin_s END, sum(x.n)::bigint
    FROM x
    GROUP BY x.lo
    HAVING sum(x.n) > 0
    ORDER BY x.lo
$$;
