-- (study, purpose, destination) rows of studies first received in [p_from, p_to)
-- matching the filters (NULL = any).
CREATE OR REPLACE FUNCTION qi_filtered_deliveries(p_from timestamptz, p_to timestamptz, p_modality text[] DEFAULT NULL,
                                                  p_source text[] DEFAULT NULL, p_destination text[] DEFAULT NULL,
                                                  p_rule text[] DEFAULT NULL)
RETURNS SETOF qi_delivery LANGUAGE sql STABLE AS $$
    SELECT * FROM qi_delivery d
    WHERE d.first_received_at >= COALESCE(p_from, '-infinity')
      AND d.first_received_at < COALESCE(p_to, 'infinity')
      AND (p_modality IS NULL OR d.modality = ANY (p_modality))
      AND (p_source IS NULL OR d.source_aet = ANY (p_source))
      AND (p_destination IS NULL OR d.destination = ANY (p_destination))
      AND (p_rule IS NULL OR d.rules && p_rule)
$$;
