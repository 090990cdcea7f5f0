-- Nexmark q3: local item suggestion. Sellers in Oregon, Idaho or California with
-- auctions in category 10: a regular (unbounded-state) join of auctions and persons.
-- SET 'table.exec.state.ttl' = '1 h' would bound its state.
INSERT INTO nexmark_sink
SELECT P.name, P.city, P.state, A.id
FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
