-- The backfill a migration starts from: the DXY rows of docker/primary-init.sql, copied into
-- data_bars as rules/dxy.toml maps them (symbol DXY.IDX, 1-minute bars, close as close_px,
-- synthetic). From here on pgbridge mirrors every committed write, so reads of the DXY rows can
-- be compared in shadow and then served by the secondary.
-- Used by `pgbridge demo` and by docker/compose.yaml, after docker/secondary-init.sql.
INSERT INTO data_bars (symbol, timeframe, ts, open, high, low, close_px, volume, is_synthetic)
SELECT 'DXY.IDX', '1m',
       timestamptz '2026-01-05 14:30:00+00' + make_interval(mins => g),
       100 + g * 0.01, 100.05 + g * 0.01, 99.95 + g * 0.01, 100.02 + g * 0.01, 1000 + g, true
FROM generate_series(0, 59) AS g;
