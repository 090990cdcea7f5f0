-- A regular LEFT OUTER JOIN: every auction with its seller's name, or NULL until (and
-- unless) the seller shows up (retractions replace the NULL row).
CREATE TABLE auction_sellers (
  id BIGINT,
  category BIGINT,
  name VARCHAR
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO auction_sellers
SELECT A.id, A.category, P.name
FROM auction AS A LEFT OUTER JOIN person AS P ON A.seller = P.id;
