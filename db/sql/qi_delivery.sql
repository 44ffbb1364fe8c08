-- The public per-(study, purpose, destination) view: cached rows of clean studies, live
-- rows of dirty ones (NOT IN, not NOT EXISTS: see qi_study.sql), plus the local day /
-- week / month of the first reception in TZ. Granted to grafana_ro.
CREATE OR REPLACE VIEW qi_delivery AS
SELECT b.*,
       t.loc::date                                  AS received_day,
       date_trunc('week', t.loc)::date              AS received_week,
       date_trunc('month', t.loc)::date             AS received_month
FROM (
    SELECT f.* FROM qi_delivery_fact f
    WHERE f.study_id NOT IN (SELECT d.study_id FROM qi_dirty d)
    UNION ALL
    SELECT l.* FROM qi_delivery_live l
    WHERE l.study_id IN (SELECT d.study_id FROM qi_dirty d)
) b
CROSS JOIN LATERAL (SELECT b.first_received_at AT TIME ZONE (SELECT tz FROM qi_settings) AS loc) t;
