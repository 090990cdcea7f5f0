-- Nexmark q4: average closing price per category, as Flink's Nexmark writes it. An
-- auction's closing price is its highest bid between its start and its expiry: a regular
-- join of auctions and bids with a condition on `expires`, then MAX per auction, an
-- updating result. The average per category runs over that changelog: each auction's
-- earlier maximum is taken back (-U) before its new one goes in (+U).
-- SET 'table.exec.state.ttl' would bound the join.
INSERT INTO nexmark_sink
SELECT Q.category, AVG(Q.final) AS avg_price
FROM (
    SELECT MAX(B.price) AS final, A.category
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.category
) Q
GROUP BY Q.category;
