-- Sum qi_attempt_day's signed rows into one per (day, destination, outcome), dropping
-- zeros (qi_refresh calls it). Rows a concurrent statement adds meanwhile are not seen by
-- the DELETE and stay as they are, so no attempt is counted twice or lost.
CREATE OR REPLACE FUNCTION qi_attempt_day_compact() RETURNS void
LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM qi_attempt_day a
        WHERE a.day IN (SELECT c.day FROM qi_attempt_day c GROUP BY c.day, c.destination, c.outcome
                        HAVING count(*) > 1 OR sum(c.n) = 0)
        RETURNING a.day, a.destination, a.outcome, a.n
    )
    INSERT INTO qi_attempt_day (day, destination, outcome, n)
    SELECT g.day, g.destination, g.outcome, sum(g.n) FROM gone g GROUP BY 1, 2, 3 HAVING sum(g.n) <> 0
$$;
