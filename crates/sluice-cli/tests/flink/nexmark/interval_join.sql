-- An interval join: bids placed within five seconds of their auction's creation.
CREATE TABLE early_bids (
  id BIGINT,
  bidder BIGINT,
  price BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO early_bids
SELECT A.id, B.bidder, B.price
FROM auction AS A JOIN bid AS B
  ON A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.dateTime + INTERVAL '5' SECOND;
