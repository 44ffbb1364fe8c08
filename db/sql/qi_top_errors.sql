-- The most frequent error messages of failed attempts; share = of all failed attempts.
-- Common arguments of the aggregates: README.md.
CREATE OR REPLACE FUNCTION qi_top_errors(p_from timestamptz, p_to timestamptz, p_limit integer DEFAULT 10,
                                         p_modality text[] DEFAULT NULL, p_source text[] DEFAULT NULL,
                                         p_destination text[] DEFAULT NULL, p_rule text[] DEFAULT NULL)
RETURNS TABLE (error text, failed bigint, dead bigint, jobs bigint, studies bigint, destinations text[],
               first_at timestamptz, last_at timestamptz, share double precision)
LANGUAGE sql STABLE AS $$
    SELECT t.error, count(*), count(*) FILTER (WHERE t.outcome = 'dead'), count(DISTINCT t.job_id),
           count(DISTINCT t.study_id), array_agg(DISTINCT t.destination ORDER BY t.destination),
           min(t.at), max(t.at), count(*)::double precision / sum(count(*)) OVER ()
    FROM qi_filtered_attempts(p_from, p_to, p_modality, p_source, p_destination, p_rule) t
    WHERE t.failed
    GROUP BY t.error
    ORDER BY count(*) DESC, t.error
    LIMIT p_limit
$$;
