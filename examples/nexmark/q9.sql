-- Nexmark q9: winning bids. Per auction, its highest bid between its start and its
-- expiry (the earliest of equal bids): a join of auctions and bids with a condition on
-- `expires`, then ROW_NUMBER() per auction ordered by price, then time, kept to the first:
-- an updating result (upserts by auction).
INSERT INTO nexmark_sink
SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category,
       auction, bidder, price, bid_date_time
FROM (
    SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time,
      ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC) AS rownum
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
)
WHERE rownum <= 1;
