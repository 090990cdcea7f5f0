-- Nexmark q19: the ten highest bids of each auction (ROW_NUMBER Top-N without windows).
-- An updating result: upserts by (auction, rank_number).
INSERT INTO nexmark_sink
SELECT auction, rank_number, price, bidder, channel, url, date_time, extra FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number
  FROM bid
) WHERE rank_number <= 10;
