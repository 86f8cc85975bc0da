-- The legacy schema on the PRIMARY: the table applications write today.
-- Used by `pgbridge demo` and by docker/compose.yaml (mounted into /docker-entrypoint-initdb.d).
CREATE TABLE derived_data_bars (
    symbol  text        NOT NULL,
    ts      timestamptz NOT NULL,
    open    numeric(18, 6) NOT NULL,
    high    numeric(18, 6) NOT NULL,
    low     numeric(18, 6) NOT NULL,
    close   numeric(18, 6) NOT NULL,
    volume  bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (symbol, ts)
);

CREATE TABLE instruments (
    symbol      text PRIMARY KEY,
    description text NOT NULL
);

INSERT INTO instruments VALUES ('DXY', 'US Dollar Index'), ('EURUSD', 'Euro / US Dollar');

INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume)
SELECT s.symbol,
       timestamptz '2026-01-05 14:30:00+00' + make_interval(mins => g),
       100 + g * 0.01, 100.05 + g * 0.01, 99.95 + g * 0.01, 100.02 + g * 0.01, 1000 + g
FROM generate_series(0, 59) AS g, (VALUES ('DXY'), ('EURUSD')) AS s(symbol);
