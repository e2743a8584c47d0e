//! Process metrics of the scraping process.

#[allow(unused_imports)]
pub(crate) use crate::os::{clock_ticks_per_second, page_size};
