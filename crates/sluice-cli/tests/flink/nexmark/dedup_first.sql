-- Deduplication keeping the first row per key on event time (a bidder's first bid).
CREATE TABLE first_bids (
  bidder BIGINT,
  `dateTime` TIMESTAMP(3)
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO first_bids
SELECT bidder, dateTime
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder ORDER BY dateTime ASC) AS rn FROM bid)
WHERE rn = 1;
