-- An interval join: bids placed within five seconds of their auction's creation.
INSERT INTO nexmark_sink
SELECT A.id, B.bidder, B.price
FROM auction AS A JOIN bid AS B
  ON A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.dateTime + INTERVAL '5' SECOND;
