-- A file benchmark: bids as JSON lines (auction, bidder, price, date_time, as
-- `sluice run --example windowed-file` reads them) -> bids and volume per auction in
-- 10-second tumbling windows of event time -> a blackhole.
--
--   sluice bench file --sql examples/bench/bids_per_auction.sql --input bids/ [-p 2] [--rate 100000]

CREATE TABLE bid (
  auction   BIGINT,
  bidder    BIGINT,
  price     BIGINT,
  date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND
) WITH ('connector' = 'filesystem', 'path' = '$INPUT', 'format' = 'json');

CREATE TABLE sink (auction BIGINT, window_end TIMESTAMP(3), bids BIGINT, volume BIGINT)
WITH ('connector' = 'blackhole');

INSERT INTO sink
SELECT auction, window_end, COUNT(*), SUM(price)
FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY auction, window_start, window_end;
