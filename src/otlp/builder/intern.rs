//! The builder's tables: entries interned by their encoding, and the memo that maps a source dictionary's indices to the builder's, once each per request.

use super::*;

/// Interns table entries by their protobuf encoding: prost encodes deterministically,
/// and several entry types hold floats (in `AnyValue`) so they cannot derive `Hash`.
#[derive(Default)]
pub(super) struct Table<T> {
    pub(super) entries: Vec<T>,
    pub(super) index: HashMap<Vec<u8>, i32>,
    /// Reused encoding buffer: a lookup of an entry already present allocates nothing.
    pub(super) scratch: Vec<u8>,
}

impl<T: Message + Default> Table<T> {
    pub(super) fn new() -> Self {
        let mut t = Table {
            entries: Vec::new(),
            index: HashMap::default(),
            scratch: Vec::new(),
        };
        // Index 0 is the zero value, whose encoding is empty.
        t.entries.push(T::default());
        t.index.insert(Vec::new(), 0);
        t
    }
    pub(super) fn intern(&mut self, entry: T) -> i32 {
        self.scratch.clear();
        // Encoding into a Vec cannot fail: it grows as needed.
        let _ = entry.encode(&mut self.scratch);
        if let Some(&i) = self.index.get(self.scratch.as_slice()) {
            return i;
        }
        let i = self.entries.len() as i32;
        self.entries.push(entry);
        self.index.insert(self.scratch.clone(), i);
        i
    }
}

/// Memo from a source dictionary's indices to the builder's. A slot is valid only when
/// its generation is the memo's: [`Memo::reset`] (one per output of a split) is then
/// O(1) instead of a pass over every table of the source.
pub(super) struct Memo<'a> {
    pub(super) src: &'a ProfilesDictionary,
    pub(super) generation: u32,
    pub(super) strings: Vec<(u32, i32)>,
    pub(super) attributes: Vec<(u32, i32)>,
    pub(super) mappings: Vec<(u32, i32)>,
    pub(super) functions: Vec<(u32, i32)>,
    pub(super) locations: Vec<(u32, i32)>,
    pub(super) stacks: Vec<(u32, i32)>,
    pub(super) links: Vec<(u32, i32)>,
}

impl<'a> Memo<'a> {
    pub(super) fn new(src: &'a ProfilesDictionary) -> Self {
        let slots = |n: usize| vec![(0, 0); n];
        Memo {
            src,
            generation: 1,
            strings: slots(src.string_table.len()),
            attributes: slots(src.attribute_table.len()),
            mappings: slots(src.mapping_table.len()),
            functions: slots(src.function_table.len()),
            locations: slots(src.location_table.len()),
            stacks: slots(src.stack_table.len()),
            links: slots(src.link_table.len()),
        }
    }
    /// Forgets every mapping (the next output has a dictionary of its own).
    pub(super) fn reset(&mut self) {
        self.generation += 1;
    }
}

/// Looks up a memoized index: `None` for index 0 (always the zero value) and for an
/// index the memo does not cover (only possible for unchecked input, mapped to 0);
/// otherwise the slot and its value, -1 when not yet mapped in this generation.
pub(super) fn memo_slot(memo: &[(u32, i32)], generation: u32, i: i32) -> Option<(usize, i32)> {
    if i <= 0 {
        return None;
    }
    let u = i as usize;
    memo.get(u)
        .map(|&(g, v)| (u, if g == generation { v } else { -1 }))
}
