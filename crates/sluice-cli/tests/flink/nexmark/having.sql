-- An updating aggregate with HAVING: bidders with at least three bids (rows come and
-- change as counts grow).
INSERT INTO nexmark_sink
SELECT bidder, COUNT(*) AS bids, MAX(price) AS top
FROM bid
GROUP BY bidder
HAVING COUNT(*) >= 3;
