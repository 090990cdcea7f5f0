-- A regular LEFT OUTER JOIN: every auction with its seller's name, or NULL until (and
-- unless) the seller shows up (retractions replace the NULL row).
INSERT INTO nexmark_sink
SELECT A.id, A.category, P.name
FROM auction AS A LEFT OUTER JOIN person AS P ON A.seller = P.id;
