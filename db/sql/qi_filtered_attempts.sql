-- Attempts that finished in [p_from, p_to) (event time), matching the filters.
CREATE OR REPLACE FUNCTION qi_filtered_attempts(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                                p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                                p_rule text[] DEFAULT NULL)
RETURNS SETOF qi_attempt LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_attempt a
    WHERE a.at >= COALESCE(p_from, '-infinity')
      AND a.at < COALESCE(p_to, 'infinity')
      AND (p_destination IS NULL OR a.destination = ANY (p_destination))
      AND (p_rule IS NULL OR a.rule_name = ANY (p_rule))
      AND (p_source IS NULL OR EXISTS (
              SELECT 1 FROM studies st WHERE st.id = a.study_id AND st.source_aet = ANY (p_source)))
      AND (p_modality IS NULL OR EXISTS (
              SELECT 1 FROM qi_study q WHERE q.study_id = a.study_id AND q.modality = ANY (p_modality)))
$$;
