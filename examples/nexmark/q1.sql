-- Nexmark q1: currency conversion. Bid prices from dollars to euros.
INSERT INTO nexmark_sink
SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid;
