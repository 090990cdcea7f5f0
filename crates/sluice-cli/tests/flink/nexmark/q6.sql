-- Average selling price per seller over their last closed auctions: the highest bid of
-- each auction (an updating aggregate over a join), then per seller an OVER the auction
-- and the ten that closed before it. Flink's Nexmark lists q6 as a query Flink cannot run
-- (an OVER aggregate over an updating input), and its text selects B.dateTime without
-- grouping by it; here the query is valid SQL, ordered by when each auction closes, ties
-- broken by its id.
CREATE TABLE nexmark_q6 (
  seller BIGINT,
  avg_price BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO nexmark_q6
SELECT
    Q.seller,
    AVG(Q.final) OVER
        (PARTITION BY Q.seller ORDER BY Q.expires, Q.id ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)
FROM (
    SELECT MAX(B.price) AS final, A.seller, A.id, A.expires
    FROM auction AS A, bid AS B
    WHERE A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires
    GROUP BY A.id, A.seller, A.expires
) AS Q;
