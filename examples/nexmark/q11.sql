-- Nexmark q11: user sessions. Bids per bidder per session (a 10-second gap closes it).
INSERT INTO nexmark_sink
SELECT bidder, COUNT(*) AS bid_count, window_start AS starttime, window_end AS endtime
FROM TABLE(SESSION(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;
