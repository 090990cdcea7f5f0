-- An updating aggregate with HAVING: bidders with at least three bids (rows come and
-- change as counts grow).
CREATE TABLE busy_bidders (
  bidder BIGINT,
  bids BIGINT,
  top BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO busy_bidders
SELECT bidder, COUNT(*) AS bids, MAX(price) AS top
FROM bid
GROUP BY bidder
HAVING COUNT(*) >= 3;
