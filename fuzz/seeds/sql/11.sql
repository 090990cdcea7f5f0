INSERT INTO sink SELECT bidder, MAX(m) FROM (SELECT auction, bidder, MAX(price) AS m FROM bid GROUP BY auction, bidder) GROUP BY bidder;
