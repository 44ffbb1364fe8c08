-- Whether a stage / metric was asked for (NULL = all); folds to a constant in custom plans,
-- so an aggregate whose FILTER is false reads no rows at all.
CREATE OR REPLACE FUNCTION qi_wants(p_list text[], p_item text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT p_list IS NULL OR p_item = ANY (p_list) $$;
