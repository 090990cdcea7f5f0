-- SESSION with PARTITION BY (Flink 1.19+): each bidder's sessions of bids at most 10 s apart.
CREATE TABLE bidder_sessions (
  bidder BIGINT,
  bid_count BIGINT,
  window_start TIMESTAMP(3),
  window_end TIMESTAMP(3)
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO bidder_sessions
SELECT bidder, COUNT(*) AS bid_count, window_start, window_end
FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;
