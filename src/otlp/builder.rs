//! Re-interning dictionaries: the engine behind [`merge`] and [`split`].

use super::check::Checked;
use super::profiles::{
    Function, KeyValueAndUnit, Link, Location, Mapping, Profile, ProfilesDictionary,
    ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
};
use super::{ProfilesRequest, sample_count};
use prost::Message;
use std::collections::HashMap as StdHashMap;

mod intern;
use intern::*;

/// The builder's maps: foldhash, seeded per process, several times faster than SipHash
/// on these short keys (the gateway's merge hashed with SipHash for a tenth of its CPU);
/// the seed keeps keys a sender chooses from being steered into collisions.
type HashMap<K, V> = StdHashMap<K, V, foldhash::quality::RandomState>;

/// Builds one request with one deduplicated dictionary out of parts of other requests.
pub struct DictionaryBuilder {
    strings: HashMap<String, i32>,
    string_table: Vec<String>,
    attributes: Table<KeyValueAndUnit>,
    mappings: Table<Mapping>,
    functions: Table<Function>,
    locations: Table<Location>,
    stacks: Table<Stack>,
    links: Table<Link>,
    resources: Vec<ResourceProfiles>,
    /// (resource, schema_url) encoding → index in `resources`, so equal resources merge.
    resource_index: HashMap<Vec<u8>, usize>,
    /// (resource index, scope and schema_url encoding) → index in its `scope_profiles`,
    /// so equal scopes merge without a scan.
    scope_index: HashMap<(usize, Vec<u8>), usize>,
    samples: u64,
}

impl Default for DictionaryBuilder {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! remap {
    ($self:ident, $memo:ident, $field:ident, $i:expr, $make:expr) => {{
        match memo_slot(&$memo.$field, $memo.generation, $i) {
            None => 0,
            Some((_, v)) if v >= 0 => v,
            Some((u, _)) => {
                let src = $memo.src;
                let entry = $make(src, u);
                let v = $self.$field.intern(entry);
                $memo.$field[u] = ($memo.generation, v);
                v
            }
        }
    }};
}

impl DictionaryBuilder {
    pub fn new() -> Self {
        let mut strings = HashMap::default();
        strings.insert(String::new(), 0);
        DictionaryBuilder {
            strings,
            string_table: vec![String::new()],
            attributes: Table::new(),
            mappings: Table::new(),
            functions: Table::new(),
            locations: Table::new(),
            stacks: Table::new(),
            links: Table::new(),
            resources: Vec::new(),
            resource_index: HashMap::default(),
            scope_index: HashMap::default(),
            samples: 0,
        }
    }

    /// Samples imported so far.
    pub fn sample_count(&self) -> u64 {
        self.samples
    }

    /// Interns a string into the output string table.
    pub fn intern_string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.string_table.len() as i32;
        self.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    /// Interns entries whose indices already point into this builder's tables
    /// (used by producers that build profiles from scratch, like the eBPF receiver).
    pub fn intern_attribute(&mut self, a: KeyValueAndUnit) -> i32 {
        self.attributes.intern(a)
    }
    pub fn intern_mapping(&mut self, m: Mapping) -> i32 {
        self.mappings.intern(m)
    }
    pub fn intern_function(&mut self, f: Function) -> i32 {
        self.functions.intern(f)
    }
    pub fn intern_location(&mut self, l: Location) -> i32 {
        self.locations.intern(l)
    }
    pub fn intern_stack(&mut self, s: Stack) -> i32 {
        self.stacks.intern(s)
    }

    /// Adds a profile whose indices point into this builder's tables, under `resource`
    /// and `scope` (merged with equal ones already present).
    pub fn push_profile(
        &mut self,
        resource: Option<super::resource::Resource>,
        scope: Option<super::common::InstrumentationScope>,
        profile: Profile,
    ) {
        self.samples += profile.samples.len() as u64;
        let rp = ResourceProfiles {
            resource,
            scope_profiles: Vec::new(),
            schema_url: String::new(),
        };
        let sp = ScopeProfiles {
            scope,
            profiles: Vec::new(),
            schema_url: String::new(),
        };
        let keys = (resource_key(&rp), scope_key(&sp));
        self.add_profiles(&keys, &rp, &sp, vec![profile]);
    }

    fn string(&mut self, m: &mut Memo, i: i32) -> i32 {
        match memo_slot(&m.strings, m.generation, i) {
            None => 0,
            Some((_, v)) if v >= 0 => v,
            Some((u, _)) => {
                let v = self.intern_string(&m.src.string_table[u]);
                m.strings[u] = (m.generation, v);
                v
            }
        }
    }

    fn attribute_list(&mut self, m: &mut Memo, list: &[i32]) -> Vec<i32> {
        list.iter().map(|&a| self.attribute(m, a)).collect()
    }

    fn attribute(&mut self, m: &mut Memo, i: i32) -> i32 {
        remap!(
            self,
            m,
            attributes,
            i,
            |src: &ProfilesDictionary, u: usize| {
                let a = &src.attribute_table[u];
                KeyValueAndUnit {
                    key_strindex: self.string(m, a.key_strindex),
                    value: a.value.clone(),
                    unit_strindex: self.string(m, a.unit_strindex),
                }
            }
        )
    }

    fn mapping(&mut self, m: &mut Memo, i: i32) -> i32 {
        remap!(
            self,
            m,
            mappings,
            i,
            |src: &ProfilesDictionary, u: usize| {
                let src = &src.mapping_table[u];
                Mapping {
                    memory_start: src.memory_start,
                    memory_limit: src.memory_limit,
                    file_offset: src.file_offset,
                    filename_strindex: self.string(m, src.filename_strindex),
                    attribute_indices: self.attribute_list(m, &src.attribute_indices),
                }
            }
        )
    }

    fn function(&mut self, m: &mut Memo, i: i32) -> i32 {
        remap!(
            self,
            m,
            functions,
            i,
            |src: &ProfilesDictionary, u: usize| {
                let f = &src.function_table[u];
                Function {
                    name_strindex: self.string(m, f.name_strindex),
                    system_name_strindex: self.string(m, f.system_name_strindex),
                    filename_strindex: self.string(m, f.filename_strindex),
                    start_line: f.start_line,
                }
            }
        )
    }

    fn location(&mut self, m: &mut Memo, i: i32) -> i32 {
        remap!(
            self,
            m,
            locations,
            i,
            |src: &ProfilesDictionary, u: usize| {
                let l = &src.location_table[u];
                Location {
                    mapping_index: self.mapping(m, l.mapping_index),
                    address: l.address,
                    lines: l
                        .lines
                        .iter()
                        .map(|line| super::profiles::Line {
                            function_index: self.function(m, line.function_index),
                            line: line.line,
                            column: line.column,
                        })
                        .collect(),
                    attribute_indices: self.attribute_list(m, &l.attribute_indices),
                }
            }
        )
    }

    fn stack(&mut self, m: &mut Memo, i: i32) -> i32 {
        remap!(self, m, stacks, i, |src: &ProfilesDictionary, u: usize| {
            let s = &src.stack_table[u];
            Stack {
                location_indices: s
                    .location_indices
                    .iter()
                    .map(|&l| self.location(m, l))
                    .collect(),
            }
        })
    }

    fn link(&mut self, m: &mut Memo, i: i32) -> i32 {
        remap!(self, m, links, i, |src: &ProfilesDictionary, u: usize| src
            .link_table[u]
            .clone())
    }

    fn value_type(&mut self, m: &mut Memo, vt: &Option<ValueType>) -> Option<ValueType> {
        vt.as_ref().map(|vt| ValueType {
            type_strindex: self.string(m, vt.type_strindex),
            unit_strindex: self.string(m, vt.unit_strindex),
        })
    }

    /// Adds all of `req` to the output. Checked input is what makes this infallible (and
    /// the output valid by construction): it is checked once, where it entered.
    pub fn import(&mut self, req: &Checked) {
        let mut m = Memo::new(super::view::Dict::of(req).0);
        for rp in &req.resource_profiles {
            let rkey = resource_key(rp);
            for sp in &rp.scope_profiles {
                let keys = (rkey.clone(), scope_key(sp));
                let profiles = sp
                    .profiles
                    .iter()
                    .map(|p| self.profile(&mut m, p, &p.samples))
                    .collect();
                self.add_profiles(&keys, rp, sp, profiles);
            }
        }
    }

    /// `p` with only `samples` (a run of its samples), re-indexed into this builder.
    fn profile(&mut self, m: &mut Memo, p: &Profile, samples: &[Sample]) -> Profile {
        let samples: Vec<Sample> = samples
            .iter()
            .map(|s| Sample {
                stack_index: self.stack(m, s.stack_index),
                attribute_indices: self.attribute_list(m, &s.attribute_indices),
                link_index: self.link(m, s.link_index),
                values: s.values.clone(),
                timestamps_unix_nano: s.timestamps_unix_nano.clone(),
            })
            .collect();
        self.samples += samples.len() as u64;
        Profile {
            sample_type: self.value_type(m, &p.sample_type),
            samples,
            time_unix_nano: p.time_unix_nano,
            duration_nano: p.duration_nano,
            period_type: self.value_type(m, &p.period_type),
            period: p.period,
            profile_id: p.profile_id.clone(),
            dropped_attributes_count: p.dropped_attributes_count,
            original_payload_format: p.original_payload_format.clone(),
            original_payload: p.original_payload.clone(),
            attribute_indices: self.attribute_list(m, &p.attribute_indices),
        }
    }

    /// Appends `profiles` under the output resource and scope equal to `rp`'s and
    /// `sp`'s (found by their `keys`), creating them if needed.
    fn add_profiles(
        &mut self,
        keys: &(Vec<u8>, Vec<u8>),
        rp: &ResourceProfiles,
        sp: &ScopeProfiles,
        profiles: Vec<Profile>,
    ) {
        let r = match self.resource_index.get(&keys.0) {
            Some(&r) => r,
            None => {
                self.resources.push(ResourceProfiles {
                    resource: rp.resource.clone(),
                    scope_profiles: Vec::new(),
                    schema_url: rp.schema_url.clone(),
                });
                let r = self.resources.len() - 1;
                self.resource_index.insert(keys.0.clone(), r);
                r
            }
        };
        let scopes = &mut self.resources[r].scope_profiles;
        match self.scope_index.get(&(r, keys.1.clone())) {
            Some(&i) => scopes[i].profiles.extend(profiles),
            None => {
                scopes.push(ScopeProfiles {
                    scope: sp.scope.clone(),
                    profiles,
                    schema_url: sp.schema_url.clone(),
                });
                self.scope_index
                    .insert((r, keys.1.clone()), scopes.len() - 1);
            }
        }
    }

    /// The merged request of a builder fed only through [`import`](Self::import): valid
    /// by construction.
    pub(crate) fn finish_imported(self) -> Checked {
        Checked::by_construction(self.finish())
    }

    /// The merged request.
    pub fn finish(self) -> ProfilesRequest {
        ProfilesRequest {
            resource_profiles: self.resources,
            dictionary: Some(ProfilesDictionary {
                mapping_table: self.mappings.entries,
                location_table: self.locations.entries,
                function_table: self.functions.entries,
                link_table: self.links.entries,
                string_table: self.string_table,
                attribute_table: self.attributes.entries,
                stack_table: self.stacks.entries,
            }),
        }
    }
}

/// Merges requests into one whose dictionary has no duplicate entries.
pub fn merge<'a>(reqs: impl IntoIterator<Item = &'a Checked>) -> Checked {
    let mut b = DictionaryBuilder::new();
    for r in reqs {
        b.import(r);
    }
    b.finish_imported()
}

/// A key for (optional message, schema URL) that no other pair shares: presence, the
/// encoding's length, the encoding, then the URL.
fn key_of<M: Message>(m: Option<&M>, schema_url: &str) -> Vec<u8> {
    let enc = m.map(Message::encode_to_vec);
    let mut key = Vec::with_capacity(9 + enc.as_ref().map_or(0, Vec::len) + schema_url.len());
    key.push(enc.is_some() as u8);
    let enc = enc.unwrap_or_default();
    key.extend_from_slice(&(enc.len() as u64).to_le_bytes());
    key.extend_from_slice(&enc);
    key.extend_from_slice(schema_url.as_bytes());
    key
}

/// The key equal resources share.
fn resource_key(rp: &ResourceProfiles) -> Vec<u8> {
    key_of(rp.resource.as_ref(), &rp.schema_url)
}

/// The key equal scopes (within one resource) share.
fn scope_key(sp: &ScopeProfiles) -> Vec<u8> {
    key_of(sp.scope.as_ref(), &sp.schema_url)
}

/// Splits a request into requests of at most `max_samples` samples each (0 = no limit),
/// in sample order, each with a dictionary that holds only what its samples reference.
/// One pass over the request: each part re-interns only what its own samples use.
/// Profiles without samples are left out of the parts.
pub fn split(req: Checked, max_samples: u64) -> Vec<Checked> {
    let total = sample_count(&req);
    if max_samples == 0 || total <= max_samples {
        return vec![req];
    }
    let mut out = Vec::with_capacity(total.div_ceil(max_samples) as usize);
    let mut m = Memo::new(super::view::Dict::of(&req).0);
    let mut b = DictionaryBuilder::new();
    for rp in &req.resource_profiles {
        let rkey = resource_key(rp);
        for sp in &rp.scope_profiles {
            let keys = (rkey.clone(), scope_key(sp));
            for p in &sp.profiles {
                let mut rest = p.samples.as_slice();
                while !rest.is_empty() {
                    let room = (max_samples - b.samples).min(rest.len() as u64) as usize;
                    let (run, after) = rest.split_at(room);
                    let part = b.profile(&mut m, p, run);
                    b.add_profiles(&keys, rp, sp, vec![part]);
                    rest = after;
                    if b.samples == max_samples {
                        out.push(std::mem::take(&mut b).finish_imported());
                        m.reset();
                    }
                }
            }
        }
    }
    if b.samples > 0 {
        out.push(b.finish_imported());
    }
    out
}
