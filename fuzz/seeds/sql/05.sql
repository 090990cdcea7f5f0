SET 'parallelism.default' = '2'; SELECT CASE WHEN price > 1 THEN 'a' ELSE 'b' END FROM bid;
