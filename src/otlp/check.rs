//! Index integrity of a request against its dictionary.

use super::ProfilesRequest;
use super::profiles::ProfilesDictionary;

/// An index that points outside its dictionary table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{referenced_by}: {table} index {index} is out of range (the table has {len} entries)")]
pub struct IndexError {
    /// Dictionary table the index points into, e.g. `stack_table`.
    pub table: &'static str,
    pub index: i64,
    pub len: usize,
    /// Where the index was found, e.g. `resource_profiles[0].scope_profiles[1].profiles[2].samples[7].stack_index`.
    pub referenced_by: String,
}

/// Validates an index into a table of `len` entries. Index 0 is the zero value and
/// stays valid even for an empty table (it then means "unset").
pub(crate) fn in_range(index: i32, len: usize) -> bool {
    index == 0 || (index > 0 && (index as usize) < len)
}

struct Checker<'a> {
    dict: &'a ProfilesDictionary,
}

impl Checker<'_> {
    fn idx(
        &self,
        table: &'static str,
        len: usize,
        index: i32,
        at: impl FnOnce() -> String,
    ) -> Result<(), IndexError> {
        if in_range(index, len) {
            Ok(())
        } else {
            Err(IndexError {
                table,
                index: index.into(),
                len,
                referenced_by: at(),
            })
        }
    }
    fn string(&self, index: i32, at: impl FnOnce() -> String) -> Result<(), IndexError> {
        self.idx("string_table", self.dict.string_table.len(), index, at)
    }
    fn attributes(&self, indices: &[i32], at: &dyn Fn() -> String) -> Result<(), IndexError> {
        for (i, &a) in indices.iter().enumerate() {
            self.idx(
                "attribute_table",
                self.dict.attribute_table.len(),
                a,
                || format!("{}.attribute_indices[{i}]", at()),
            )?;
        }
        Ok(())
    }

    fn dictionary(&self) -> Result<(), IndexError> {
        let d = self.dict;
        for (i, s) in d.stack_table.iter().enumerate() {
            for (j, &l) in s.location_indices.iter().enumerate() {
                self.idx("location_table", d.location_table.len(), l, || {
                    format!("stack_table[{i}].location_indices[{j}]")
                })?;
            }
        }
        for (i, l) in d.location_table.iter().enumerate() {
            self.idx(
                "mapping_table",
                d.mapping_table.len(),
                l.mapping_index,
                || format!("location_table[{i}].mapping_index"),
            )?;
            for (j, line) in l.lines.iter().enumerate() {
                self.idx(
                    "function_table",
                    d.function_table.len(),
                    line.function_index,
                    || format!("location_table[{i}].lines[{j}].function_index"),
                )?;
            }
            self.attributes(&l.attribute_indices, &|| format!("location_table[{i}]"))?;
        }
        for (i, f) in d.function_table.iter().enumerate() {
            for (field, v) in [
                ("name_strindex", f.name_strindex),
                ("system_name_strindex", f.system_name_strindex),
                ("filename_strindex", f.filename_strindex),
            ] {
                self.string(v, || format!("function_table[{i}].{field}"))?;
            }
        }
        for (i, m) in d.mapping_table.iter().enumerate() {
            self.string(m.filename_strindex, || {
                format!("mapping_table[{i}].filename_strindex")
            })?;
            self.attributes(&m.attribute_indices, &|| format!("mapping_table[{i}]"))?;
        }
        for (i, a) in d.attribute_table.iter().enumerate() {
            self.string(a.key_strindex, || {
                format!("attribute_table[{i}].key_strindex")
            })?;
            self.string(a.unit_strindex, || {
                format!("attribute_table[{i}].unit_strindex")
            })?;
        }
        Ok(())
    }
}

/// Checks that every index in `req` (samples, profiles and the dictionary's own
/// cross-references) lies inside its table. The error names the table, the index and
/// where it was found, so a client can tell what it sent wrong.
pub fn check(req: &ProfilesRequest) -> Result<(), IndexError> {
    let c = Checker {
        dict: super::view::Dict::of(req).0,
    };
    c.dictionary()?;
    let d = c.dict;
    for (r, rp) in req.resource_profiles.iter().enumerate() {
        for (s, sp) in rp.scope_profiles.iter().enumerate() {
            for (p, profile) in sp.profiles.iter().enumerate() {
                let at = || format!("resource_profiles[{r}].scope_profiles[{s}].profiles[{p}]");
                for (field, vt) in [
                    ("sample_type", &profile.sample_type),
                    ("period_type", &profile.period_type),
                ] {
                    if let Some(vt) = vt {
                        c.string(vt.type_strindex, || {
                            format!("{}.{field}.type_strindex", at())
                        })?;
                        c.string(vt.unit_strindex, || {
                            format!("{}.{field}.unit_strindex", at())
                        })?;
                    }
                }
                c.attributes(&profile.attribute_indices, &at)?;
                for (i, sample) in profile.samples.iter().enumerate() {
                    let at = || format!("{}.samples[{i}]", at());
                    c.idx(
                        "stack_table",
                        d.stack_table.len(),
                        sample.stack_index,
                        || format!("{}.stack_index", at()),
                    )?;
                    c.idx("link_table", d.link_table.len(), sample.link_index, || {
                        format!("{}.link_index", at())
                    })?;
                    c.attributes(&sample.attribute_indices, &at)?;
                }
            }
        }
    }
    Ok(())
}

/// A request whose every index resolves: it passed [`check`] where it entered Stackline
/// (a receiver), or it is the output of [`merge`](super::merge) / [`split`](super::split)
/// over such requests, valid by construction. The pipeline carries this type, so later
/// stages (batch, exporters) neither check again nor meet an index out of range.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked(ProfilesRequest);

impl Checked {
    /// Checks `req` (see [`check`]).
    pub fn new(req: ProfilesRequest) -> Result<Self, IndexError> {
        check(&req)?;
        Ok(Checked(req))
    }

    /// For outputs that only re-index checked inputs. Asserted in debug builds, so tests
    /// and fuzzing catch a builder that breaks the promise.
    pub(crate) fn by_construction(req: ProfilesRequest) -> Self {
        debug_assert_eq!(check(&req), Ok(()), "a builder produced an invalid request");
        Checked(req)
    }

    /// Changes the request in place. `f` must keep every index valid (the symbolizer adds
    /// entries and re-points locations); asserted in debug builds.
    pub fn modify<R>(&mut self, f: impl FnOnce(&mut ProfilesRequest) -> R) -> R {
        let r = f(&mut self.0);
        debug_assert_eq!(check(&self.0), Ok(()), "a stage made a request invalid");
        r
    }

    pub fn into_inner(self) -> ProfilesRequest {
        self.0
    }
}

impl std::ops::Deref for Checked {
    type Target = ProfilesRequest;
    fn deref(&self) -> &ProfilesRequest {
        &self.0
    }
}

impl TryFrom<ProfilesRequest> for Checked {
    type Error = IndexError;
    fn try_from(req: ProfilesRequest) -> Result<Self, IndexError> {
        Checked::new(req)
    }
}
