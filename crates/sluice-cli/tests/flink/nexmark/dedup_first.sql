-- Deduplication keeping the first row per key on event time (a bidder's first bid).
INSERT INTO nexmark_sink
SELECT bidder, dateTime
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder ORDER BY dateTime ASC) AS rn FROM bid)
WHERE rn = 1;
