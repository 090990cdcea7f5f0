INSERT INTO sink SELECT a.auction, b.bidder FROM bid a LEFT JOIN bid b ON a.auction = b.auction AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '5' SECOND;
