-- A window join: people and the auctions they opened in the same 10 s tumbling window.
CREATE TABLE new_sellers (
  window_start TIMESTAMP(3),
  id BIGINT,
  name VARCHAR,
  auction BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO new_sellers
SELECT L.window_start, L.id, L.name, R.id AS auction
FROM (SELECT * FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))) L
JOIN (SELECT * FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))) R
  ON L.window_start = R.window_start AND L.window_end = R.window_end AND L.id = R.seller;
