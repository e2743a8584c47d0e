//! Putting a family's rows in the order of their identities without comparing the identities
//! themselves: each identity is cut into its fields (label names and values, then the rest),
//! the distinct strings met at each field position are ranked, and the rows are sorted as
//! integers made of their fields' ranks (see `docs/design.md`).
//!
//! Comparing identities is a `memcmp` of two strings at random places in tens of megabytes, most
//! of it over the prefix that every series of a family shares; ranking reads each identity once,
//! in the order the rows were made, and looks its fields up in tables that stay in cache, because
//! label values repeat (a family of 300,000 series has a handful of methods and statuses). The
//! sort then moves 16-byte integers. Where the ranks do not fit in 128 bits, the rows are sorted by
//! their identities.

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use super::merge::{Arenas, Row};

/// Rows ranked in one run of the first pass: few enough to number their distinct strings in 16
/// bits (`u16::MAX` is kept free).
const RUN: usize = 1 << 15;

/// The ranks of a family's identities (see [`sort_rows`]).
pub(super) struct Ranks<'i> {
    /// Per sorted row: its identity as ranks, the label fields from the most significant bits
    /// down, the rest of the identity in the lowest `tail_bits`.
    pub(super) keys: Vec<u128>,
    /// Per label field position (names and values alternate): the bits of its rank, and its
    /// distinct strings in order (rank 1 first; 0 is "no such field").
    pub(super) widths: Vec<u32>,
    pub(super) positions: Vec<Vec<&'i [u8]>>,
    pub(super) tail_bits: u32,
    /// The distinct rests of the identities, in order.
    pub(super) tails: Vec<&'i [u8]>,
    /// The rank of the rest of a histogram's stored `_count` sample, if a row has it.
    count_tail: Option<u128>,
}

impl Ranks<'_> {
    /// Where position `k`'s rank is in a key: shift and mask.
    pub(super) fn field(&self, k: usize) -> (u32, u128) {
        let shift = self.tail_bits + self.widths[k + 1..].iter().sum::<u32>();
        (shift, low_bits(self.widths[k]))
    }

    pub(super) fn tail_mask(&self) -> u128 {
        low_bits(self.tail_bits)
    }
}

/// How to tell, after sorting, whether neighbouring rows have the same identity or labels.
pub(super) enum Order<'i> {
    /// Sorted by ranks.
    Ranked(Ranks<'i>),
    /// Sorted by comparing the identities.
    Identities,
}

impl Order<'_> {
    /// Whether sorted rows `i` and `i - 1` have the same identity (`None`: compare them).
    #[inline]
    pub(super) fn same_as_prev(&self, i: usize) -> Option<bool> {
        match self {
            Order::Ranked(r) => Some(i > 0 && r.keys[i] == r.keys[i - 1]),
            Order::Identities => None,
        }
    }

    /// Whether sorted rows `i` and `i - 1` have the same labels (`None`: compare them).
    #[inline]
    pub(super) fn labels_as_prev(&self, i: usize) -> Option<bool> {
        match self {
            Order::Ranked(r) => {
                Some(i > 0 && r.keys[i] >> r.tail_bits == r.keys[i - 1] >> r.tail_bits)
            }
            Order::Identities => None,
        }
    }

    /// Whether sorted row `i`'s identity ends with `count` (`None`: look).
    #[inline]
    pub(super) fn is_count(&self, i: usize) -> Option<bool> {
        match self {
            Order::Ranked(r) => Some(Some(r.keys[i] & r.tail_mask()) == r.count_tail),
            Order::Identities => None,
        }
    }

    /// Sorted row `i`'s key (0 when not ranked).
    #[inline]
    pub(super) fn key(&self, i: usize) -> u128 {
        match self {
            Order::Ranked(r) => r.keys[i],
            Order::Identities => 0,
        }
    }

    /// Moves row `from`'s key to `to` (when rows are merged in place).
    #[inline]
    pub(super) fn move_key(&mut self, from: usize, to: usize) {
        if let Order::Ranked(r) = self {
            r.keys[to] = r.keys[from];
        }
    }

    /// Keeps the first `len` keys.
    pub(super) fn truncate(&mut self, len: usize) {
        if let Order::Ranked(r) = self {
            r.keys.truncate(len);
        }
    }
}

fn low_bits(bits: u32) -> u128 {
    match bits {
        128.. => u128::MAX,
        b => (1u128 << b) - 1,
    }
}

/// Bits that hold the numbers `0..=n`.
fn bits_for(n: usize) -> u32 {
    usize::BITS - n.leading_zeros()
}

/// The fields of an identity (see [`Row`]): each label name and value as written (ended by
/// `00 01`, a 0 byte of the string escaped as `00 02`), then the rest after the labels' `00 00`.
/// `None` if the identity is not of that form.
fn fields(ident: &[u8], labels_end: usize) -> Option<(impl Iterator<Item = &[u8]>, &[u8])> {
    let labels = ident.get(..labels_end.checked_sub(2)?)?;
    if ident.get(labels_end - 2..labels_end) != Some(&b"\0\0"[..]) {
        return None;
    }
    let mut rest = labels;
    let segments = std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut from = 0;
        loop {
            let zero = from + rest.get(from..)?.iter().position(|&b| b == 0)?;
            if rest.get(zero + 1) == Some(&1) {
                let field = &rest[..zero];
                rest = &rest[zero + 2..];
                return Some(field);
            }
            from = zero + 2;
        }
    });
    Some((segments, &ident[labels_end..]))
}

/// What one run of rows found: per field position (the rest of the identities last), the
/// distinct strings in the order met; per row, the number of its label fields then each field's
/// number among its position's distinct strings.
struct Local<'i> {
    distinct: Vec<Vec<&'i [u8]>>,
    tail: Vec<&'i [u8]>,
    ids: Vec<u16>,
}

fn rank_run<'i>(rows: &[Row], arenas: Arenas<'i>) -> Option<Local<'i>> {
    let mut local = Local {
        distinct: Vec::new(),
        tail: Vec::new(),
        ids: Vec::with_capacity(rows.len() * 8),
    };
    let mut tables: Vec<FxHashMap<&'i [u8], u16>> = Vec::new();
    let mut tail_table: FxHashMap<&'i [u8], u16> = FxHashMap::default();
    // The previous row's fields: label values repeat from one row to the next.
    let mut last: Vec<(&'i [u8], u16)> = Vec::new();
    let mut last_tail: Option<(&'i [u8], u16)> = None;
    let intern = |table: &mut FxHashMap<&'i [u8], u16>, distinct: &mut Vec<&'i [u8]>, s| {
        let next = distinct.len() as u16;
        *table.entry(s).or_insert_with(|| {
            distinct.push(s);
            next
        })
    };
    for row in rows {
        let ident = row.ident(arenas).as_bytes();
        let (segments, tail) = fields(ident, row.labels_end as usize)?;
        let count_at = local.ids.len();
        local.ids.push(0);
        let mut count = 0usize;
        for (k, s) in segments.enumerate() {
            if k == tables.len() {
                tables.push(FxHashMap::default());
                local.distinct.push(Vec::new());
                last.push((&[], u16::MAX));
            }
            let id = match last[k] {
                (l, id) if id != u16::MAX && l == s => id,
                _ => {
                    let id = intern(&mut tables[k], &mut local.distinct[k], s);
                    last[k] = (s, id);
                    id
                }
            };
            local.ids.push(id);
            count += 1;
        }
        local.ids[count_at] = u16::try_from(count).ok()?;
        let id = match last_tail {
            Some((l, id)) if l == tail => id,
            _ => {
                let id = intern(&mut tail_table, &mut local.tail, tail);
                last_tail = Some((tail, id));
                id
            }
        };
        local.ids.push(id);
    }
    Some(local)
}

/// All distinct strings of one position, sorted: a string's rank is its index plus one (0 is
/// "no such field").
fn merge_distinct<'l, 'i: 'l>(lists: impl Iterator<Item = &'l Vec<&'i [u8]>>) -> Vec<&'i [u8]> {
    let mut all: Vec<&[u8]> = lists.flatten().copied().collect();
    all.par_sort_unstable();
    all.dedup();
    all
}

/// Puts `rows` in the order of their identities (as `memcmp` orders them): the indices of the
/// rows in that order, and how to compare neighbours. `count` is the rest of a histogram's
/// stored `_count` identity.
pub(super) fn sort_rows<'i>(
    rows: &[Row],
    arenas: Arenas<'i>,
    count: &[u8],
) -> (Order<'i>, Vec<u32>) {
    if let Some(mut ranks) = ranked(rows, arenas, count, 128) {
        let index_bits = bits_for(rows.len());
        let mut keyed: Vec<u128> = std::mem::take(&mut ranks.keys)
            .into_iter()
            .enumerate()
            .map(|(i, k)| k << index_bits | i as u128)
            .collect();
        keyed.par_sort_unstable();
        let index = low_bits(index_bits);
        let order: Vec<u32> = keyed.par_iter().map(|k| (k & index) as u32).collect();
        keyed.par_iter_mut().for_each(|k| *k >>= index_bits);
        ranks.keys = keyed;
        return (Order::Ranked(ranks), order);
    }
    let mut order: Vec<u32> = (0..rows.len() as u32).collect();
    order.par_sort_unstable_by(|&a, &b| {
        rows[a as usize]
            .ident(arenas)
            .cmp(rows[b as usize].ident(arenas))
    });
    (Order::Identities, order)
}

/// Each row's identity as ranks, in `max_bits` bits less those that number the rows (`None` if
/// they do not fit or an identity is not of the expected form).
fn ranked<'i>(rows: &[Row], arenas: Arenas<'i>, count: &[u8], max_bits: u32) -> Option<Ranks<'i>> {
    let locals: Vec<Local> = rows
        .par_chunks(RUN)
        .map(|run| rank_run(run, arenas))
        .collect::<Option<_>>()?;
    let positions = locals.iter().map(|l| l.distinct.len()).max().unwrap_or(0);
    let ranked: Vec<Vec<&[u8]>> = (0..positions)
        .into_par_iter()
        .map(|k| merge_distinct(locals.iter().filter_map(|l| l.distinct.get(k))))
        .collect();
    let tails = merge_distinct(locals.iter().map(|l| &l.tail));
    let widths: Vec<u32> = ranked.iter().map(|r| bits_for(r.len())).collect();
    let tail_bits = bits_for(tails.len());
    let total = widths.iter().sum::<u32>() + tail_bits + bits_for(rows.len());
    if total > max_bits {
        return None;
    }
    let rank_in = |sorted: &[&[u8]], s: &[u8]| -> u128 {
        sorted.binary_search(&s).map_or(0, |i| i as u128 + 1)
    };
    let keys: Vec<Vec<u128>> = locals
        .par_iter()
        .map(|local| {
            let ranks: Vec<Vec<u128>> = local
                .distinct
                .iter()
                .zip(&ranked)
                .map(|(d, sorted)| d.iter().map(|s| rank_in(sorted, s)).collect())
                .collect();
            let tail_ranks: Vec<u128> = local.tail.iter().map(|s| rank_in(&tails, s)).collect();
            let mut keys = Vec::new();
            let mut ids = local.ids.iter().map(|&id| id as usize);
            while let Some(count) = ids.next() {
                let mut key = 0u128;
                for (k, width) in widths.iter().enumerate() {
                    let rank = match k < count {
                        true => ids.next().map_or(0, |id| ranks[k][id]),
                        false => 0,
                    };
                    key = key << width | rank;
                }
                let tail = ids.next().map_or(0, |id| tail_ranks[id]);
                keys.push(key << tail_bits | tail);
            }
            keys
        })
        .collect();
    let count_tail = tails.binary_search(&count).ok().map(|i| i as u128 + 1);
    Some(Ranks {
        keys: keys.concat(),
        widths,
        positions: ranked,
        tail_bits,
        tails,
        count_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Identities of random label sets and sample names (some with 0 bytes, label sets of
    /// different lengths and names), in `arenas`; rows in the order made.
    fn rows_of(series: &[(Vec<(String, String)>, String)], arena: &mut String) -> Vec<Row> {
        series
            .iter()
            .enumerate()
            .map(|(member, (labels, name))| {
                let start = arena.len();
                let (end, _) = super::super::merge::sort_key_into(
                    arena,
                    labels.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                    "",
                    true,
                );
                arena.push('\x01');
                arena.push_str(name);
                Row {
                    arena: 0,
                    start,
                    len: (arena.len() - start) as u32,
                    labels_end: (end - start) as u32,
                    member: member as u32,
                }
            })
            .collect()
    }

    fn series() -> impl Strategy<Value = Vec<(Vec<(String, String)>, String)>> {
        let label = (
            prop::sample::select(vec!["a", "b", "method", "a\0b", ""]),
            "[ab\0\x01\x02z]{0,3}",
        )
            .prop_map(|(n, v)| (n.to_owned(), v));
        let one = (
            prop::collection::vec(label, 0..4),
            prop::sample::select(vec!["x", "x_count", "x\0", "y"]),
        )
            .prop_map(|(l, n)| (l, n.to_owned()));
        prop::collection::vec(one, 0..200)
    }

    proptest! {
        /// Sorting by ranks puts the rows in the order of their identities, and the comparisons
        /// of neighbours it answers are those of the identities.
        #[test]
        fn ranks_order_as_identities(series in series()) {
            let mut arena = String::new();
            let rows = rows_of(&series, &mut arena);
            let arenas = Arenas { keys: std::slice::from_ref(&arena), own: &[] };
            let count = b"\x01x_count";
            let (order, sorted) = sort_rows(&rows, arenas, count);
            let by_ranks: Vec<Row> = sorted.iter().map(|&i| rows[i as usize]).collect();
            let ranked = matches!(order, Order::Ranked(_));
            prop_assert!(ranked);
            let mut by_idents = rows.clone();
            by_idents.sort_by(|a, b| a.ident(arenas).cmp(b.ident(arenas)));
            let idents = |rows: &[Row]| -> Vec<String> {
                rows.iter().map(|r| r.ident(arenas).to_owned()).collect()
            };
            prop_assert_eq!(idents(&by_ranks), idents(&by_idents));
            for i in 0..by_ranks.len() {
                let row = &by_ranks[i];
                let prev = i.checked_sub(1).map(|p| &by_ranks[p]);
                prop_assert_eq!(
                    order.same_as_prev(i),
                    Some(prev.is_some_and(|p| p.ident(arenas) == row.ident(arenas)))
                );
                prop_assert_eq!(
                    order.labels_as_prev(i),
                    Some(prev.is_some_and(|p| p.labels(arenas) == row.labels(arenas)))
                );
                let tail = &row.ident(arenas).as_bytes()[row.labels_end as usize..];
                prop_assert_eq!(order.is_count(i), Some(tail == count));
            }
        }
    }

    #[test]
    fn ranks_that_do_not_fit_fall_back_to_identities() {
        // 300 distinct values in each of 3 labels (9 bits each, 1 for each name), 2 sample names
        // (2 bits) and 300 rows (9 bits): 41 bits do not fit in 32.
        let series: Vec<(Vec<(String, String)>, String)> = (0..300)
            .map(|i| {
                let labels = ["a", "b", "c"]
                    .iter()
                    .map(|n| (n.to_string(), format!("{}", (i * 7919) % 300)))
                    .collect();
                (labels, ["x", "y"][i % 2].to_owned())
            })
            .collect();
        let mut arena = String::new();
        let rows = rows_of(&series, &mut arena);
        let arenas = Arenas {
            keys: std::slice::from_ref(&arena),
            own: &[],
        };
        assert!(ranked(&rows, arenas, b"", 32).is_none());
        assert!(ranked(&rows, arenas, b"", 128).is_some());
    }

    #[test]
    fn identities_not_of_the_form_are_sorted_as_strings() {
        let arena = String::from("a\0\x01b\0\x01\0\0\x01x|zz");
        let good = Row {
            arena: 0,
            start: 0,
            len: 10,
            labels_end: 8,
            member: 0,
        };
        let bad = Row {
            arena: 0,
            start: 10,
            len: 3,
            labels_end: 1,
            member: 1,
        };
        let arenas = Arenas {
            keys: std::slice::from_ref(&arena),
            own: &[],
        };
        let rows = vec![bad, good];
        let (order, sorted) = sort_rows(&rows, arenas, b"");
        assert!(matches!(order, Order::Identities));
        assert_eq!(sorted, vec![1, 0]);
    }
}
