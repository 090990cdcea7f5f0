-- Nexmark q10: log to file system. Bids with their day and minute as text, as Flink
-- writes them partitioned into files (here into the blackhole sink, as the benchmark).
INSERT INTO nexmark_sink
SELECT auction, bidder, price, date_time, extra,
       DATE_FORMAT(date_time, 'yyyy-MM-dd') AS dt, DATE_FORMAT(date_time, 'HH:mm') AS hm
FROM bid;
