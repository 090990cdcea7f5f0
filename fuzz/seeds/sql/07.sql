EXPLAIN SELECT auction FROM TABLE(SESSION(TABLE bid, DESCRIPTOR(date_time), INTERVAL '5' SECOND)) GROUP BY auction, window_start, window_end;
