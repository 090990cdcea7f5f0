-- A window Top-N ordered by two columns: the three highest bids of every 10 s window.
CREATE TABLE top_bids_per_window (
  window_start TIMESTAMP(3),
  window_end TIMESTAMP(3),
  bidder BIGINT,
  price BIGINT,
  rn BIGINT
) WITH (
  'connector' = 'blackhole'
);

INSERT INTO top_bids_per_window
SELECT window_start, window_end, bidder, price, rn
FROM (SELECT window_start, window_end, bidder, price,
             ROW_NUMBER() OVER (PARTITION BY window_start, window_end
                                ORDER BY price DESC, bidder ASC) AS rn
      FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND)))
WHERE rn <= 3;
