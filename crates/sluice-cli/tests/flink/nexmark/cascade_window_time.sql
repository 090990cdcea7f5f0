-- Cascading windows as Flink's documentation writes them: bids per auction per 5 s, with
-- window_time as the rows' time attribute, then a 10 s TUMBLE over those rows.
CREATE VIEW auction_5s AS
SELECT auction, window_start, window_end, window_time AS rowtime, COUNT(*) AS num
FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '5' SECOND))
GROUP BY auction, window_start, window_end, window_time;

CREATE TABLE cascaded (
  window_start TIMESTAMP(3),
  window_end TIMESTAMP(3),
  bids BIGINT,
  auction_windows BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO cascaded
SELECT window_start, window_end, SUM(num) AS bids, COUNT(*) AS auction_windows
FROM TABLE(TUMBLE(TABLE auction_5s, DESCRIPTOR(rowtime), INTERVAL '10' SECOND))
GROUP BY window_start, window_end;
