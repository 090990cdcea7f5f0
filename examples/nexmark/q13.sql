-- Nexmark q13: bounded side input join. Each bid joins a bounded table of 10 000 rows
-- (here the datagen connector, bounded) by auction modulo 10 000: a lookup join.
CREATE TABLE side_input (
  `key` BIGINT,
  `value` VARCHAR
) WITH (
  'connector' = 'datagen',
  'number-of-rows' = '10000',
  'fields.key.kind' = 'sequence',
  'fields.key.start' = '0',
  'fields.key.end' = '9999',
  'fields.value.length' = '8'
);

CREATE VIEW bid_keyed AS SELECT *, MOD(auction, 10000) AS side_key FROM bid;

INSERT INTO nexmark_sink
SELECT B.auction, B.bidder, B.price, B.date_time, S.`value`
FROM bid_keyed AS B JOIN side_input FOR SYSTEM_TIME AS OF B.date_time AS S
ON B.side_key = S.`key`;
