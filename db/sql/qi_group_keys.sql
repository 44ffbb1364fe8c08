-- The groups a study belongs to: one modality or source, every destination or rule.
CREATE OR REPLACE FUNCTION qi_group_keys(p_group text, modality text, source_aet text, destinations text[], rules text[])
RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_group
        WHEN 'modality' THEN ARRAY[COALESCE(modality, '(none)')]
        WHEN 'source_aet' THEN ARRAY[COALESCE(source_aet, '(none)')]
        WHEN 'destination' THEN destinations
        WHEN 'rule' THEN rules
        ELSE ARRAY['all'] END
$$;
