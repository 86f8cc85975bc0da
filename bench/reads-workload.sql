-- One read of a migrated table by its key: a random one-minute DXY bar of the :rows loaded.
\set n random(0, :rows - 1)
SELECT ts, open, high, low, close, volume FROM derived_data_bars WHERE symbol = 'DXY' AND ts = '2026-01-01 00:00:00+00'::timestamptz + :n * interval '1 minute';
