-- q0 through Kafka: reads topic bids2 to its end, projects, discards (measures the source).
CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, date_time TIMESTAMP(3), extra STRING,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
WITH ('connector' = 'kafka', 'topic' = 'bids2', 'properties.bootstrap.servers' = '127.0.0.1:19092', 'format' = 'json',
      'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
CREATE TABLE sink (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3)) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT auction, bidder, price, date_time FROM bids;
