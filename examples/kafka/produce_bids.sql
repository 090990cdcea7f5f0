-- Writes 2 M Nexmark events (1.84 M bids) as JSON into topic bids2 (a broker started with
-- scripts/kafka/broker creates it on first use, with 2 partitions).
CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '2000000', 'first-event.rate' = '100000');
CREATE TABLE kbids (auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, date_time TIMESTAMP(3), extra STRING)
WITH ('connector' = 'kafka', 'topic' = 'bids2', 'properties.bootstrap.servers' = '127.0.0.1:19092', 'format' = 'json',
      'sink.delivery-guarantee' = 'at-least-once');
INSERT INTO kbids SELECT auction, bidder, price, channel, url, date_time, extra FROM bid;
