-- Selection.
INSERT INTO nexmark_sink SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0;
