INSERT INTO sink SELECT auction, price * 2 AS p FROM bid WHERE price > 10;
