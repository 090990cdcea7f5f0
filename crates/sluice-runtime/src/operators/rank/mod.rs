//! Top-N: per partition over a whole stream, with retractions ([`topn`]), and per window
//! once the window is complete ([`window_topn`]).

pub mod topn;
pub mod window_topn;
