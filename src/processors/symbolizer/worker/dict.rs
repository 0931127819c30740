//! Writing resolved lines into the request's dictionary: functions and strings interned once per request.

use super::*;

/// Appends strings and functions to a dictionary without duplicating entries.
pub(super) struct LineWriter<'a> {
    dict: &'a mut ProfilesDictionary,
    /// String-table indices, hashed by the strings they point at (no second copy).
    strings: hashbrown::HashTable<i32>,
    hasher: Fast,
    functions: HashMap<(i32, i32, i32, i64), i32, Fast>,
    /// This request's number (from 1): a `Func` written under it knows its index.
    request: u64,
}

impl<'a> LineWriter<'a> {
    /// A writer for about `locations` locations (tables are sized for a new function
    /// each, so they are not rehashed as they grow).
    pub(super) fn new(
        dict: &'a mut ProfilesDictionary,
        hasher: Fast,
        request: u64,
        locations: usize,
    ) -> Self {
        if dict.string_table.is_empty() {
            dict.string_table.push(String::new());
        }
        if dict.function_table.is_empty() {
            dict.function_table.push(Function::default());
        }
        let mut strings =
            hashbrown::HashTable::with_capacity(dict.string_table.len() + 2 * locations);
        for (i, s) in dict.string_table.iter().enumerate() {
            let h = hasher.hash_one(s.as_str());
            // Keep the first of any duplicates the input already had.
            if strings
                .find(h, |&j: &i32| dict.string_table[j as usize] == *s)
                .is_none()
            {
                strings.insert_unique(h, i as i32, |&j| {
                    hasher.hash_one(dict.string_table[j as usize].as_str())
                });
            }
        }
        let mut functions = HashMap::with_capacity_and_hasher(
            dict.function_table.len() + locations,
            Fast::default(),
        );
        functions.extend(dict.function_table.iter().enumerate().map(|(i, f)| {
            (
                (
                    f.name_strindex,
                    f.system_name_strindex,
                    f.filename_strindex,
                    f.start_line,
                ),
                i as i32,
            )
        }));
        LineWriter {
            dict,
            strings,
            hasher,
            functions,
            request,
        }
    }

    /// The index of `s`, whose hash under `self.hasher` is `h`.
    pub(super) fn string(&mut self, s: &str, h: u64) -> i32 {
        let table = &mut self.dict.string_table;
        if let Some(&i) = self.strings.find(h, |&j| table[j as usize] == s) {
            return i;
        }
        let i = table.len() as i32;
        table.push(s.to_owned());
        let hasher = &self.hasher;
        self.strings
            .insert_unique(h, i, |&j| hasher.hash_one(table[j as usize].as_str()));
        i
    }

    pub(super) fn function(&mut self, func: &Rc<Func>) -> i32 {
        let (request, index) = func.written.get();
        if request == self.request {
            return index;
        }
        let key = (
            self.string(&func.name, func.hashes[0]),
            self.string(&func.system_name, func.hashes[1]),
            self.string(&func.file, func.hashes[2]),
            0,
        );
        let f = match self.functions.get(&key) {
            Some(&f) => f,
            None => {
                let f = self.dict.function_table.len() as i32;
                self.dict.function_table.push(Function {
                    name_strindex: key.0,
                    system_name_strindex: key.1,
                    filename_strindex: key.2,
                    start_line: 0,
                });
                self.functions.insert(key, f);
                f
            }
        };
        func.written.set((self.request, f));
        f
    }

    pub(super) fn write(&mut self, location: usize, lines: &[ResolvedLine]) {
        let out = lines
            .iter()
            .map(|l| Line {
                function_index: self.function(&l.func),
                line: l.line,
                column: l.column,
            })
            .collect();
        self.dict.location_table[location].lines = out;
    }
}
