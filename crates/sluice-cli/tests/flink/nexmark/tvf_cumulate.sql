-- CUMULATE: bids and volume in windows growing by 2 s up to 10 s (Flink's window TVF).
INSERT INTO nexmark_sink
SELECT window_start, window_end, COUNT(*) AS bids, SUM(price) AS volume
FROM TABLE(CUMULATE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
GROUP BY window_start, window_end;
