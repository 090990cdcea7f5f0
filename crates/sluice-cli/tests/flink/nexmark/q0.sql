-- Pass-through.
INSERT INTO nexmark_sink SELECT auction, bidder, price, dateTime, extra FROM bid;
