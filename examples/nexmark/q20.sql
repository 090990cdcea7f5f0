-- Nexmark q20: expand bid with auction. Bids of category-10 auctions with the auction's
-- columns: a regular join (unbounded state unless 'table.exec.state.ttl' is set).
INSERT INTO nexmark_sink
SELECT auction, bidder, price, channel, url, B.date_time, B.extra,
       item_name, description, initial_bid, reserve, A.date_time, expires, seller, category, A.extra
FROM bid AS B INNER JOIN auction AS A ON B.auction = A.id
WHERE A.category = 10;
