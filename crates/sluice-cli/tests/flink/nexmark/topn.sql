-- A regular (non-windowed) Top-N: the three highest initial bids per category, ties
-- broken by auction id.
INSERT INTO nexmark_sink
SELECT category, id, initialBid, rn
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY category ORDER BY initialBid DESC, id ASC) AS rn
      FROM auction)
WHERE rn <= 3;
