-- OVER with a RANGE frame on event time: the highest bid on the auction in the second up
-- to each bid, peers (bids of the same millisecond) included.
CREATE TABLE recent_max (
  auction BIGINT,
  price BIGINT,
  `dateTime` TIMESTAMP(3),
  recent_max BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO recent_max
SELECT auction, price, dateTime,
       MAX(price) OVER (PARTITION BY auction ORDER BY dateTime
                        RANGE BETWEEN INTERVAL '1' SECOND PRECEDING AND CURRENT ROW) AS recent_max
FROM bid;
