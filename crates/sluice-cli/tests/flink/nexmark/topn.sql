-- A regular (non-windowed) Top-N: the three highest initial bids per category, ties
-- broken by auction id.
CREATE TABLE top_auctions (
  category BIGINT,
  id BIGINT,
  initialBid BIGINT,
  rn BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO top_auctions
SELECT category, id, initialBid, rn
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY category ORDER BY initialBid DESC, id ASC) AS rn
      FROM auction)
WHERE rn <= 3;
