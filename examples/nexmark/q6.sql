-- Nexmark q6: average selling price per seller over their last closed auctions. An
-- auction's closing price is its highest bid between its start and its expiry (an
-- updating result, as in q4); per seller, an OVER aggregate averages it over the auction
-- and the ten that closed before it, ordered by expiry (ties by id). Over an updating
-- input the OVER takes back and re-emits each row whose frame a change touched.
-- Nexmark's text selects B.date_time without grouping by it; Flink cannot run q6 at all.
INSERT INTO nexmark_sink
SELECT
    Q.seller,
    AVG(Q.final) OVER
        (PARTITION BY Q.seller ORDER BY Q.expires, Q.id ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)
        AS avg_price
FROM (
    SELECT MAX(B.price) AS final, A.seller, A.id, A.expires
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.seller, A.expires
) Q;
