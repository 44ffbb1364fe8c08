-- The histogram bucket of a duration: width_bucket over qi_hist_bounds() compares the
-- value with fixed bounds, so the bucket never decreases as the value grows (every value
-- of a lower bucket sorts before every value of a higher one), which the exact
-- percentiles of qi_stage_stats rely on. A computed logarithm would not guarantee it.
CREATE OR REPLACE FUNCTION qi_hist_bucket(v double precision) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT width_bucket(v, qi_hist_bounds()) $$;
