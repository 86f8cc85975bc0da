-- The new schema on the SECONDARY: bars of every timeframe in one table, the close column
-- renamed, the symbol namespaced. rules/dxy.toml maps derived_data_bars (DXY rows) onto it.
-- Used by `pgbridge demo` and by docker/compose.yaml (mounted into /docker-entrypoint-initdb.d).
CREATE TABLE data_bars (
    symbol       text        NOT NULL,
    timeframe    text        NOT NULL,
    ts           timestamptz NOT NULL,
    open         numeric(18, 6) NOT NULL,
    high         numeric(18, 6) NOT NULL,
    low          numeric(18, 6) NOT NULL,
    close_px     numeric(18, 6) NOT NULL,
    volume       bigint      NOT NULL DEFAULT 0,
    is_synthetic boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (symbol, timeframe, ts)
);

-- Unmigrated, present and identical on both sides (`shared_tables` in the config).
CREATE TABLE instruments (
    symbol      text PRIMARY KEY,
    description text NOT NULL
);

INSERT INTO instruments VALUES ('DXY', 'US Dollar Index'), ('EURUSD', 'Euro / US Dollar');
