-- Latency under load: Nexmark bids from the generator paced at 3 M events per wall-clock
-- second (event time advancing as fast: 'first-event.rate' equals the pace), counted per
-- auction in 1-second tumbling windows, into a blackhole. End-to-end latency is measured
-- from the arrival of the input that closed a window to its rows at the sink.
--
--   sluice bench file --sql examples/bench/paced_window_1s.sql [-p 2] [--json]
--
-- Change both rates together to measure at another load.

CREATE TABLE bid (
  auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '100' MILLISECOND
) WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '30000000',
        'rate-limit' = '3000000', 'first-event.rate' = '3000000');

CREATE TABLE sink (auction BIGINT, window_end TIMESTAMP(3), bids BIGINT)
WITH ('connector' = 'blackhole');

INSERT INTO sink
SELECT auction, window_end, COUNT(*)
FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '1' SECOND))
GROUP BY auction, window_start, window_end;
