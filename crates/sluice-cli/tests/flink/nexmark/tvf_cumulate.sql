-- CUMULATE: bids and volume in windows growing by 2 s up to 10 s (Flink's window TVF).
CREATE TABLE cumulative_volume (
  window_start TIMESTAMP(3),
  window_end TIMESTAMP(3),
  bids BIGINT,
  volume BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO cumulative_volume
SELECT window_start, window_end, COUNT(*) AS bids, SUM(price) AS volume
FROM TABLE(CUMULATE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
GROUP BY window_start, window_end;
