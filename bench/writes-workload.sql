-- bench/writes.sh's pgbench script: one transaction writes one bar of a migrated table (an upsert,
-- then an update of the same row by its key), in the shape a table whose writes are on the
-- secondary accepts: the write view's ON CONFLICT DO UPDATE can only SET a column to EXCLUDED's
-- value (bench/mirror-workload.sql's `close = derived_data_bars.close + 1` is refused there, 0A000).
-- SYMBOL is replaced by bench/writes.sh: 'DXY' (the rows rules/dxy.toml migrates) through the
-- bridge whose writes are switched, 'RLY' through the plain relay.
\set m random(1, 200000)
\set v random(1, 1000000)
BEGIN;
INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) VALUES ('SYMBOL', timestamptz '2026-01-01 00:00:00+00' + :m * interval '1 minute', 100 + :m * 0.0001, 100.05 + :m * 0.0001, 99.95 + :m * 0.0001, 100 + :v * 0.000001, :v) ON CONFLICT (symbol, ts) DO UPDATE SET close = EXCLUDED.close, volume = EXCLUDED.volume;
UPDATE derived_data_bars SET high = high + 1 WHERE symbol = 'SYMBOL' AND ts = timestamptz '2026-01-01 00:00:00+00' + :m * interval '1 minute';
COMMIT;
