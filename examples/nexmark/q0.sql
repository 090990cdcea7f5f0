-- Nexmark q0: pass-through. Measures the cost of reading and writing bids.
INSERT INTO nexmark_sink
SELECT auction, bidder, price, date_time, extra FROM bid;
