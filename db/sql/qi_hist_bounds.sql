-- Lower bounds of the histogram buckets of qi_stage_hist, strictly increasing: one
-- bucket per whole second below 64 s, then 16 log-spaced buckets per doubling (4.4 %
-- wide) up to 64 * 2^25 s (68 years). Bucket 0 holds values below 0, the last one
-- everything from its bound up (Infinity and NaN included). Constant: an immutable call
-- without arguments is evaluated once when a query is planned.
CREATE OR REPLACE FUNCTION qi_hist_bounds() RETURNS double precision[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_agg(b ORDER BY b) FROM (
        SELECT s::double precision AS b FROM generate_series(0, 63) AS s
        UNION ALL
        SELECT 64 * power(2::double precision, k / 16.0::double precision) FROM generate_series(0, 400) AS k
    ) x
$$;
