-- t at whole-second precision in UTC (Orthanc's resolution), whatever the session's TimeZone.
-- Orthanc's times (ReceptionDate, change dates, job completions) are whole seconds, the
-- worker's own have fractions; truncating keeps causal order (a before b => whole(a) <=
-- whole(b)), so wherever a worker time meets an Orthanc time both are compared and
-- subtracted at whole seconds (qi_study_live.sql).
CREATE OR REPLACE FUNCTION qi_whole_second(t timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT date_trunc('second', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' $$;
