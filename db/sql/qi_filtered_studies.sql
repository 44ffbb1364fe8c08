-- Studies first received in [p_from, p_to) matching the filters (NULL = any).
CREATE OR REPLACE FUNCTION qi_filtered_studies(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                               p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                               p_rule text[] DEFAULT NULL)
RETURNS SETOF qi_study LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_study s
    WHERE s.first_received_at >= COALESCE(p_from, '-infinity')
      AND s.first_received_at < COALESCE(p_to, 'infinity')
      AND (p_modality IS NULL OR s.modality = ANY (p_modality))
      AND (p_source IS NULL OR s.source_aet = ANY (p_source))
      AND (p_destination IS NULL OR s.destinations && p_destination)
      AND (p_rule IS NULL OR s.rules && p_rule)
$$;
