DROP INDEX deliveries_ended;
