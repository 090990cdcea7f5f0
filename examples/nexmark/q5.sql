-- Nexmark q5: hot items. The auctions with the most bids in each 10-second window,
-- sliding every 2 seconds (ties kept). Flink's text joins the per-window counts with
-- their maximum; RANK() <= 1 over the window is the same result.
INSERT INTO nexmark_sink
SELECT auction, num FROM (
  SELECT auction, num, window_start, window_end,
         RANK() OVER (PARTITION BY window_start, window_end ORDER BY num DESC) AS rk
  FROM (
    SELECT auction, COUNT(*) AS num, window_start, window_end
    FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
    GROUP BY auction, window_start, window_end
  )
) WHERE rk <= 1;
