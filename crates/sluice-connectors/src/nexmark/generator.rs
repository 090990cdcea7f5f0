//! The Nexmark event generator, Arrow-native: it writes columns directly, with no
//! per-event objects and no per-row allocation.
//!
//! Event `i` is a person, an auction or a bid by `i mod 50` (1 : 3 : 46), and all its
//! fields are a pure function of `(seed, i)`: ids follow the benchmark's arithmetic
//! (bids go to recent, mostly "hot" auctions and bidders), prices are log-uniform,
//! event time is `base_time + i / first_event_rate`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::rng::Rng;

/// Persons per 50 events.
pub const PERSON_PROPORTION: u64 = 1;
/// Auctions per 50 events.
pub const AUCTION_PROPORTION: u64 = 3;
/// Bids per 50 events.
pub const BID_PROPORTION: u64 = 46;
/// Events in one proportion cycle.
pub const TOTAL_PROPORTION: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;

const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
const NUM_ACTIVE_PEOPLE: u64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
const HOT_AUCTION_RATIO: u64 = 100;
const HOT_SELLER_RATIO: u64 = 100;
const HOT_BIDDER_RATIO: u64 = 100;
// Probability 1 - 1/N of picking a hot auction / seller / bidder.
const HOT_AUCTIONS_PROB: u64 = 2;
const HOT_SELLERS_PROB: u64 = 4;
const HOT_BIDDERS_PROB: u64 = 4;
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;
const CHANNELS: usize = 10_000;

const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const HOT_URLS: [&str; 4] = [
    "https://www.nexmark.com/googl/item.htm?query=1",
    "https://www.nexmark.com/faceb/item.htm?query=1",
    "https://www.nexmark.com/baidu/item.htm?query=1",
    "https://www.nexmark.com/apple/item.htm?query=1",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// Which kind of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A new person.
    Person,
    /// A new auction.
    Auction,
    /// A bid.
    Bid,
}

/// The kind of event `id`.
#[inline]
pub fn kind_of(id: u64) -> EventKind {
    let offset = id % TOTAL_PROPORTION;
    if offset < PERSON_PROPORTION {
        EventKind::Person
    } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
        EventKind::Auction
    } else {
        EventKind::Bid
    }
}

// General in the proportions, which are constants today (so clippy sees a no-op).
#[allow(clippy::unnecessary_min_or_max)]
fn last_base0_person_id(id: u64) -> u64 {
    let epoch = id / TOTAL_PROPORTION;
    let offset = (id % TOTAL_PROPORTION).min(PERSON_PROPORTION - 1);
    epoch * PERSON_PROPORTION + offset
}

fn last_base0_auction_id(id: u64) -> u64 {
    let mut epoch = id / TOTAL_PROPORTION;
    let mut offset = id % TOTAL_PROPORTION;
    if offset < PERSON_PROPORTION {
        // Before any auction of this epoch: the last one of the previous epoch.
        if epoch == 0 {
            return 0;
        }
        epoch -= 1;
        offset = AUCTION_PROPORTION - 1;
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + offset
}

fn next_base0_person_id(id: u64, rng: &mut Rng) -> u64 {
    let num_people = last_base0_person_id(id) + 1;
    let active = num_people.min(NUM_ACTIVE_PEOPLE);
    let n = rng.below(active + PERSON_ID_LEAD);
    (num_people - active + n).min(num_people + PERSON_ID_LEAD)
}

fn next_base0_auction_id(id: u64, rng: &mut Rng) -> u64 {
    let max = last_base0_auction_id(id);
    let min = max.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
    min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
}

fn next_price(rng: &mut Rng) -> i64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as i64
}

/// Generator settings.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// Seed: the same seed gives the same events.
    pub seed: u64,
    /// Event time of event 0, epoch milliseconds.
    pub base_time_ms: i64,
    /// Events per second of event time (spacing of `date_time`).
    pub first_event_rate: u64,
}

/// Shared, precomputed material (random text, channel URLs), built once per source.
pub struct Generator {
    config: GeneratorConfig,
    pool: String,
    channels: Vec<(String, String)>,
}

impl Generator {
    /// Builds the generator's tables.
    pub fn new(config: GeneratorConfig) -> Self {
        let mut rng = Rng::for_event(config.seed, u64::MAX);
        let pool: String = (0..65_536)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        let mut channels = Vec::with_capacity(CHANNELS);
        for c in 0..CHANNELS {
            let mut r = Rng::for_event(config.seed ^ 0x5eed, c as u64);
            let s = |r: &mut Rng| {
                let at = r.below(65_536 - 5) as usize;
                pool[at..at + 5].to_string()
            };
            let url = format!(
                "https://www.nexmark.com/{}/{}/{}/item.htm?query=1&channel_id={}",
                s(&mut r),
                s(&mut r),
                s(&mut r),
                (c as u32).reverse_bits() >> 18
            );
            channels.push((format!("channel-{c}"), url));
        }
        Self {
            config,
            pool,
            channels,
        }
    }

    /// Event time of event `id`, epoch ms.
    #[inline]
    pub fn timestamp(&self, id: u64) -> i64 {
        self.config.base_time_ms
            + (u128::from(id) * 1000 / u128::from(self.config.first_event_rate)) as i64
    }

    #[inline]
    fn text(&self, rng: &mut Rng, len: usize) -> &str {
        let len = len.min(self.pool.len());
        let at = rng.below((self.pool.len() - len + 1) as u64) as usize;
        &self.pool[at..at + len]
    }

    /// Padding that brings an event to about `avg` bytes, as the benchmark does.
    #[inline]
    fn extra(&self, rng: &mut Rng, current: usize, avg: usize) -> &str {
        if current >= avg {
            return "";
        }
        let want = avg - current;
        let delta = want / 5;
        let len = want - delta + rng.below(2 * delta as u64 + 1) as usize;
        self.text(rng, len)
    }
}

/// Schema of the `bid` table.
pub fn bid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

/// Schema of the `auction` table.
pub fn auction_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("item_name", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, false),
        Field::new("initial_bid", DataType::Int64, false),
        Field::new("reserve", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(
            "expires",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("seller", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

/// Schema of the `person` table.
pub fn person_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email_address", DataType::Utf8, false),
        Field::new("credit_card", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

/// Columns being filled for one table. One lives per batch being generated, so the
/// size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum TableBuilder {
    /// Bids.
    Bid {
        /// auction
        auction: Int64Builder,
        /// bidder
        bidder: Int64Builder,
        /// price
        price: Int64Builder,
        /// channel
        channel: StringBuilder,
        /// url
        url: StringBuilder,
        /// date_time
        date_time: TimestampMillisecondBuilder,
        /// extra
        extra: StringBuilder,
    },
    /// Auctions.
    Auction {
        /// id
        id: Int64Builder,
        /// item_name
        item_name: StringBuilder,
        /// description
        description: StringBuilder,
        /// initial_bid
        initial_bid: Int64Builder,
        /// reserve
        reserve: Int64Builder,
        /// date_time
        date_time: TimestampMillisecondBuilder,
        /// expires
        expires: TimestampMillisecondBuilder,
        /// seller
        seller: Int64Builder,
        /// category
        category: Int64Builder,
        /// extra
        extra: StringBuilder,
    },
    /// Persons.
    Person {
        /// id
        id: Int64Builder,
        /// name
        name: StringBuilder,
        /// email_address
        email: StringBuilder,
        /// credit_card
        card: StringBuilder,
        /// city
        city: StringBuilder,
        /// state
        state: StringBuilder,
        /// date_time
        date_time: TimestampMillisecondBuilder,
        /// extra
        extra: StringBuilder,
    },
}

impl TableBuilder {
    /// Builders for `kind` with room for `rows` rows.
    pub fn new(kind: EventKind, rows: usize) -> Self {
        let s = |bytes: usize| StringBuilder::with_capacity(rows, rows * bytes);
        match kind {
            EventKind::Bid => TableBuilder::Bid {
                auction: Int64Builder::with_capacity(rows),
                bidder: Int64Builder::with_capacity(rows),
                price: Int64Builder::with_capacity(rows),
                channel: s(10),
                url: s(60),
                date_time: TimestampMillisecondBuilder::with_capacity(rows),
                extra: s(AVG_BID_BYTES),
            },
            EventKind::Auction => TableBuilder::Auction {
                id: Int64Builder::with_capacity(rows),
                item_name: s(20),
                description: s(100),
                initial_bid: Int64Builder::with_capacity(rows),
                reserve: Int64Builder::with_capacity(rows),
                date_time: TimestampMillisecondBuilder::with_capacity(rows),
                expires: TimestampMillisecondBuilder::with_capacity(rows),
                seller: Int64Builder::with_capacity(rows),
                category: Int64Builder::with_capacity(rows),
                extra: s(AVG_AUCTION_BYTES),
            },
            EventKind::Person => TableBuilder::Person {
                id: Int64Builder::with_capacity(rows),
                name: s(16),
                email: s(16),
                card: s(19),
                city: s(10),
                state: s(2),
                date_time: TimestampMillisecondBuilder::with_capacity(rows),
                extra: s(AVG_PERSON_BYTES),
            },
        }
    }

    /// Appends event `id` (which must be of this table's kind).
    #[inline]
    pub fn append(&mut self, g: &Generator, id: u64) {
        let mut rng = Rng::for_event(g.config.seed, id);
        let ts = g.timestamp(id);
        match self {
            TableBuilder::Bid {
                auction,
                bidder,
                price,
                channel,
                url,
                date_time,
                extra,
            } => {
                let a = if rng.below(HOT_AUCTIONS_PROB) > 0 {
                    (last_base0_auction_id(id) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
                } else {
                    next_base0_auction_id(id, &mut rng)
                };
                let b = if rng.below(HOT_BIDDERS_PROB) > 0 {
                    (last_base0_person_id(id) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
                } else {
                    next_base0_person_id(id, &mut rng)
                };
                auction.append_value(a as i64 + FIRST_AUCTION_ID);
                bidder.append_value(b as i64 + FIRST_PERSON_ID);
                price.append_value(next_price(&mut rng));
                let (c, u) = if rng.below(2) > 0 {
                    let h = rng.below(4) as usize;
                    (HOT_CHANNELS[h], HOT_URLS[h])
                } else {
                    let (c, u) = &g.channels[rng.below(CHANNELS as u64) as usize];
                    (c.as_str(), u.as_str())
                };
                channel.append_value(c);
                url.append_value(u);
                date_time.append_value(ts);
                extra.append_value(g.extra(&mut rng, 32 + c.len() + u.len(), AVG_BID_BYTES));
            }
            TableBuilder::Auction {
                id: aid,
                item_name,
                description,
                initial_bid,
                reserve,
                date_time,
                expires,
                seller,
                category,
                extra,
            } => {
                let s = if rng.below(HOT_SELLERS_PROB) > 0 {
                    (last_base0_person_id(id) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
                } else {
                    next_base0_person_id(id, &mut rng)
                };
                let initial = next_price(&mut rng);
                aid.append_value(last_base0_auction_id(id) as i64 + FIRST_AUCTION_ID);
                let name_len = 5 + rng.below(16) as usize;
                item_name.append_value(g.text(&mut rng, name_len));
                let desc_len = 20 + rng.below(81) as usize;
                description.append_value(g.text(&mut rng, desc_len));
                initial_bid.append_value(initial);
                reserve.append_value(initial + next_price(&mut rng));
                date_time.append_value(ts);
                expires.append_value(ts + 1000 + rng.below(20_000) as i64);
                seller.append_value(s as i64 + FIRST_PERSON_ID);
                category.append_value(FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64);
                extra.append_value(g.extra(&mut rng, 100 + name_len + desc_len, AVG_AUCTION_BYTES));
            }
            TableBuilder::Person {
                id: pid,
                name,
                email,
                card,
                city,
                state,
                date_time,
                extra,
            } => {
                pid.append_value(last_base0_person_id(id) as i64 + FIRST_PERSON_ID);
                let first = FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize];
                let last = LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize];
                name.append_value(format_args!("{first} {last}").to_string());
                let user = g.text(&mut rng, 7);
                let domain = g.text(&mut rng, 5);
                email.append_value(format!("{user}@{domain}.com"));
                let n = rng.next_u64();
                card.append_value(format!(
                    "{:04} {:04} {:04} {:04}",
                    n % 10_000,
                    (n >> 16) % 10_000,
                    (n >> 32) % 10_000,
                    (n >> 48) % 10_000
                ));
                city.append_value(US_CITIES[rng.below(US_CITIES.len() as u64) as usize]);
                state.append_value(US_STATES[rng.below(US_STATES.len() as u64) as usize]);
                date_time.append_value(ts);
                extra.append_value(g.extra(&mut rng, 80, AVG_PERSON_BYTES));
            }
        }
    }

    /// Finishes the batch.
    pub fn finish(self, schema: &SchemaRef) -> RecordBatch {
        let columns: Vec<ArrayRef> = match self {
            TableBuilder::Bid {
                mut auction,
                mut bidder,
                mut price,
                mut channel,
                mut url,
                mut date_time,
                mut extra,
            } => vec![
                Arc::new(auction.finish()),
                Arc::new(bidder.finish()),
                Arc::new(price.finish()),
                Arc::new(channel.finish()),
                Arc::new(url.finish()),
                Arc::new(date_time.finish()),
                Arc::new(extra.finish()),
            ],
            TableBuilder::Auction {
                mut id,
                mut item_name,
                mut description,
                mut initial_bid,
                mut reserve,
                mut date_time,
                mut expires,
                mut seller,
                mut category,
                mut extra,
            } => vec![
                Arc::new(id.finish()),
                Arc::new(item_name.finish()),
                Arc::new(description.finish()),
                Arc::new(initial_bid.finish()),
                Arc::new(reserve.finish()),
                Arc::new(date_time.finish()),
                Arc::new(expires.finish()),
                Arc::new(seller.finish()),
                Arc::new(category.finish()),
                Arc::new(extra.finish()),
            ],
            TableBuilder::Person {
                mut id,
                mut name,
                mut email,
                mut card,
                mut city,
                mut state,
                mut date_time,
                mut extra,
            } => vec![
                Arc::new(id.finish()),
                Arc::new(name.finish()),
                Arc::new(email.finish()),
                Arc::new(card.finish()),
                Arc::new(city.finish()),
                Arc::new(state.finish()),
                Arc::new(date_time.finish()),
                Arc::new(extra.finish()),
            ],
        };
        RecordBatch::try_new(Arc::clone(schema), columns)
            .expect("invariant: builders match the table schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_mix_is_1_3_46() {
        let mut counts = [0u64; 3];
        for id in 0..50_000 {
            counts[kind_of(id) as usize] += 1;
        }
        assert_eq!(counts, [1_000, 3_000, 46_000]);
    }

    #[test]
    fn ids_are_monotonic_and_bids_reference_existing_auctions() {
        let mut last_auction = 0;
        for id in 0..10_000u64 {
            let a = last_base0_auction_id(id);
            assert!(a >= last_auction);
            last_auction = a;
            if kind_of(id) == EventKind::Bid {
                let mut rng = Rng::for_event(7, id);
                let b = next_base0_auction_id(id, &mut rng);
                assert!(b <= a + AUCTION_ID_LEAD);
            }
        }
    }
}
