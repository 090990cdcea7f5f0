-- Currency conversion.
INSERT INTO nexmark_sink SELECT auction, bidder, 0.908 * price as price, dateTime, extra FROM bid;
