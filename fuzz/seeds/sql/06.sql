INSERT INTO sink SELECT auction, COUNT(DISTINCT bidder) FROM bid GROUP BY auction;
