-- The ten highest bids of each auction: Top-N (an updating result).
INSERT INTO nexmark_sink
SELECT * FROM
(SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number FROM bid)
WHERE rank_number <= 10;
