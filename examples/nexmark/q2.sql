-- Nexmark q2: selection. Bids on a set of auctions.
INSERT INTO nexmark_sink
SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0;
