-- Hot items: per auction, the bids over 1 000 in 10-second tumbling windows of event
-- time, from the built-in Nexmark generator into JSON-lines files.
--
--   cargo run --release -p sluice-cli -- run examples/hot_items.sql
--
-- 10 million events at 100 000 events per second of event time: 100 s of event time,
-- so windows open and close all through the run.

SET 'parallelism.default' = '2';

CREATE TABLE bid (
  auction   BIGINT,
  bidder    BIGINT,
  price     BIGINT,
  channel   VARCHAR,
  url       VARCHAR,
  date_time TIMESTAMP(3),
  extra     VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND
) WITH (
  'connector' = 'nexmark',
  'table' = 'bid',
  'events.num' = '10000000',
  'first-event.rate' = '100000'
);

CREATE TABLE hot_items (
  auction      BIGINT,
  window_start TIMESTAMP(3),
  window_end   TIMESTAMP(3),
  bids         BIGINT,
  top_price    BIGINT
) WITH (
  'connector' = 'filesystem',
  'path' = 'sluice-out/hot-items',
  'format' = 'json'
);

INSERT INTO hot_items
SELECT auction, window_start, window_end, COUNT(*) AS bids, MAX(price) AS top_price
FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
WHERE price > 1000
GROUP BY auction, window_start, window_end;
