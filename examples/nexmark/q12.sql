-- Nexmark q12: processing-time windows. Bids per bidder in 10-second tumbling windows
-- of processing time (the wall clock), from a table with a PROCTIME() column.
CREATE TABLE bid_proctime (
  auction   BIGINT,
  bidder    BIGINT,
  price     BIGINT,
  date_time TIMESTAMP(3),
  p_time AS PROCTIME()
) WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '10000000');

INSERT INTO nexmark_sink
SELECT bidder, COUNT(*) AS bid_count, window_start, window_end
FROM TABLE(TUMBLE(TABLE bid_proctime, DESCRIPTOR(p_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;
