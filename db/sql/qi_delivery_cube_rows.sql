-- Deliveries of studies first received in [p_from, p_to), counted per local day,
-- destination, purpose and outcome: qi_delivery_cube's whole days plus qi_delivery_delta
-- (migration 0014). The same counts as grouping qi_delivery's rows.
CREATE OR REPLACE FUNCTION qi_delivery_cube_rows(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (day date, destination text, purpose text, outcome text, n bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.day, c.destination, c.purpose, c.outcome, c.n::bigint
    FROM qi_hist_days(p_from, p_to) w
    JOIN qi_delivery_cube c ON c.day BETWEEN w.d1 AND w.d2
    UNION ALL
    SELECT d.day, d.destination, d.purpose, d.outcome, d.sgn FROM qi_delivery_delta(p_from, p_to) d
$$;
