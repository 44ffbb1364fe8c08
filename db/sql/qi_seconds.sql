-- b - a in seconds (timestamptz arithmetic is UTC, so DST changes add no hour).
CREATE OR REPLACE FUNCTION qi_seconds(b timestamptz, a timestamptz) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT EXTRACT(EPOCH FROM (b - a))::double precision $$;
