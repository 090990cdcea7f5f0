-- A windowed query through Kafka: topic bids2 -> 10 s tumbling count per auction -> topic counts.
CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, date_time TIMESTAMP(3), extra STRING,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
WITH ('connector' = 'kafka', 'topic' = 'bids2', 'properties.bootstrap.servers' = '127.0.0.1:19092', 'format' = 'json',
      'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
CREATE TABLE out (window_end TIMESTAMP(3), auction BIGINT, bids BIGINT) WITH ('connector' = 'kafka', 'topic' = 'counts',
   'properties.bootstrap.servers' = '127.0.0.1:19092', 'format' = 'json', 'sink.delivery-guarantee' = 'at-least-once');
INSERT INTO out SELECT window_end, auction, COUNT(*) FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY window_start, window_end, auction;
