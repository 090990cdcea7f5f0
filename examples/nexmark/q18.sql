-- Nexmark q18: find the last bid of each bidder on each auction: deduplication keeping
-- the last row (ROW_NUMBER ordered by time, descending). An updating result: upserts
-- by (bidder, auction).
INSERT INTO nexmark_sink
SELECT auction, bidder, price, channel, url, date_time, extra FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC) AS rank_number
  FROM bid
) WHERE rank_number <= 1;
