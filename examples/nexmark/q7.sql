-- Nexmark q7: highest bid. The bids with the highest price in each 10-second tumbling
-- window (ties kept). Flink's text joins bids with the per-window maximum; RANK() <= 1
-- over the window's bids is the same result.
INSERT INTO nexmark_sink
SELECT auction, price, bidder, date_time, extra FROM (
  SELECT auction, price, bidder, date_time, extra, window_start, window_end,
         RANK() OVER (PARTITION BY window_start, window_end ORDER BY price DESC) AS rk
  FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
) WHERE rk <= 1;
