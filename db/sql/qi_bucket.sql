-- The bucket of a row for a grain ('day', 'week', 'month'; anything else: one bucket).
CREATE OR REPLACE FUNCTION qi_bucket(p_grain text, d date, w date, m date) RETURNS date
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_grain WHEN 'day' THEN d WHEN 'week' THEN w WHEN 'month' THEN m END
$$;
