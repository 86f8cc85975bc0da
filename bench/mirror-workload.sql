-- bench/mirror.sh's pgbench script: one transaction writes one bar of a migrated table (an upsert,
-- then an update of the same row). SYMBOL is replaced by bench/mirror.sh: 'DXY' (the rows
-- rules/dxy.toml migrates) through the mirrored pgbridge, another symbol through the plain relay,
-- so the relay's unmirrored writes never touch the rows compared with the secondary at the end.
\set m random(1, 200000)
BEGIN;
INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) VALUES ('SYMBOL', timestamptz '2026-01-01 00:00:00+00' + :m * interval '1 minute', 100 + :m * 0.0001, 100.05 + :m * 0.0001, 99.95 + :m * 0.0001, 100.02 + :m * 0.0001, 1000) ON CONFLICT (symbol, ts) DO UPDATE SET close = derived_data_bars.close + 1, volume = derived_data_bars.volume + 1;
UPDATE derived_data_bars SET high = high + 1 WHERE symbol = 'SYMBOL' AND ts = timestamptz '2026-01-01 00:00:00+00' + :m * interval '1 minute';
COMMIT;
