-- Nexmark events as JSON lines in the layout of Flink's Nexmark: one object per event,
-- `event_type` (0 person, 1 auction, 2 bid) and one of the nested rows set.
CREATE TABLE events (
  event_type INT,
  person ROW<id BIGINT, name VARCHAR, emailAddress VARCHAR, creditCard VARCHAR, city VARCHAR,
             state VARCHAR, dateTime TIMESTAMP(3), extra VARCHAR>,
  auction ROW<id BIGINT, itemName VARCHAR, description VARCHAR, initialBid BIGINT,
              reserve BIGINT, dateTime TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT,
              category BIGINT, extra VARCHAR>,
  bid ROW<auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
          dateTime TIMESTAMP(3), extra VARCHAR>,
  dateTime AS CASE WHEN event_type = 0 THEN person.dateTime
                   WHEN event_type = 1 THEN auction.dateTime
                   ELSE bid.dateTime END,
  WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = '$INPUT', 'format' = 'json');

CREATE VIEW person AS
SELECT person.id AS id, person.name AS name, person.emailAddress AS email_address,
       person.creditCard AS credit_card, person.city AS city, person.state AS state,
       dateTime AS date_time, person.extra AS extra
FROM events WHERE event_type = 0;

CREATE VIEW auction AS
SELECT auction.id AS id, auction.itemName AS item_name, auction.description AS description,
       auction.initialBid AS initial_bid, auction.reserve AS reserve, dateTime AS date_time,
       auction.expires AS expires, auction.seller AS seller, auction.category AS category,
       auction.extra AS extra
FROM events WHERE event_type = 1;

CREATE VIEW bid AS
SELECT bid.auction AS auction, bid.bidder AS bidder, bid.price AS price,
       bid.channel AS channel, bid.url AS url, dateTime AS date_time, bid.extra AS extra
FROM events WHERE event_type = 2;

CREATE TABLE nexmark_sink WITH ('connector' = 'blackhole');
