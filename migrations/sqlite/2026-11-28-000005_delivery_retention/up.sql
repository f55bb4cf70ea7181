-- The hourly purge finds ended deliveries by status and end time (delivered_at for
-- delivered ones; failed ones use deliveries_due on (status, next_attempt_at)).
CREATE INDEX deliveries_ended ON deliveries (status, delivered_at);
