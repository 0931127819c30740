//! The reading machinery: serde seeds and visitors that build each value straight
//! from the token stream, with the path to it (for errors) and the memory built so far
//! (for the budget) kept in one [`Ctx`] they all share.
//!
//! Which keys each message has and how each is read is in `fields.rs`; scalars are
//! in `scalars.rs`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::JsonError;
use crate::otlp::ProfilesRequest;

/// Nested values deeper than this (in steps of the path) are refused: attribute values
/// nest without bound in the schema, a request is not a tree that deep.
pub(super) const MAX_DEPTH: usize = 32;

/// Reads a whole request: one JSON value, then nothing but whitespace.
pub(super) fn request(bytes: &[u8], max_decoded_bytes: u64) -> Result<ProfilesRequest, JsonError> {
    let mut ctx = Ctx {
        path: Vec::new(),
        used: 0,
        limit: max_decoded_bytes,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let read = |ctx: &mut Ctx, de: &mut serde_json::Deserializer<_>| {
        ctx.charge(size_of::<ProfilesRequest>())?;
        let req = Msg::<ProfilesRequest>::new().read(ctx, &mut *de)?;
        de.end()?;
        Ok::<_, serde_json::Error>(req)
    };
    read(&mut ctx, &mut de).map_err(|e| ctx.error(&e))
}

/// One step of the path to a value: a field, or an element of a list field.
struct Step {
    name: &'static str,
    index: Option<usize>,
}

/// What every visitor shares.
pub(super) struct Ctx {
    /// Where reading is. Steps are pushed on the way in and popped only on success, so
    /// after an error this is the path to what failed.
    path: Vec<Step>,
    /// Estimated bytes of everything built so far, kept or not.
    used: u64,
    limit: u64,
}

impl Ctx {
    fn error(&self, e: &dyn fmt::Display) -> JsonError {
        let over_limit = self.used > self.limit;
        if self.path.is_empty() {
            return JsonError {
                message: e.to_string(),
                over_limit,
            };
        }
        let mut s = String::new();
        for (i, step) in self.path.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            s.push_str(step.name);
            if let Some(i) = step.index {
                s.push_str(&format!("[{i}]"));
            }
        }
        JsonError {
            message: format!("{s}: {e}"),
            over_limit,
        }
    }

    /// Counts `bytes` about to be allocated, refusing them past the limit: checked
    /// before each allocation, so a request over the limit never gets much past it.
    pub(super) fn charge<E: de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        self.used = self.used.saturating_add(bytes as u64);
        if self.used <= self.limit {
            return Ok(());
        }
        let limit = if self.limit.is_multiple_of(1 << 20) {
            format!("{} MiB", self.limit >> 20)
        } else {
            format!("{} bytes", self.limit)
        };
        Err(E::custom(format_args!(
            "the request takes more than {limit} once decoded (limits.max_decoded_size_mib); \
             send smaller requests or raise the limit"
        )))
    }

    fn check_depth<E: de::Error>(&self, steps: usize) -> Result<(), E> {
        if steps > MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nested more than {MAX_DEPTH} levels deep"
            )));
        }
        Ok(())
    }

    /// Steps into a field; `checked` (all but lists, whose elements are checked, and
    /// two AnyValue cases) refuses it past [`MAX_DEPTH`].
    fn enter<E: de::Error>(&mut self, name: &'static str, checked: bool) -> Result<(), E> {
        if checked {
            self.check_depth(self.path.len())?;
        }
        self.path.push(Step { name, index: None });
        Ok(())
    }

    /// Steps onto element `i` of the list field just entered.
    fn at_index<E: de::Error>(&mut self, i: usize) -> Result<(), E> {
        self.check_depth(self.path.len().saturating_sub(1))?;
        if let Some(step) = self.path.last_mut() {
            step.index = Some(i);
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.path.pop();
    }

    /// Pushes onto `v`, counting the buffer when it grows (doubling, as `Vec` would).
    fn push<T, E: de::Error>(&mut self, v: &mut Vec<T>, item: T) -> Result<(), E> {
        if v.len() == v.capacity() {
            let more = v.capacity().max(4);
            self.charge(more.saturating_mul(size_of::<T>()))?;
            v.try_reserve_exact(more).map_err(E::custom)?;
        }
        v.push(item);
        Ok(())
    }
}

/// How one JSON value becomes one Rust value.
pub(super) trait Kind: Copy {
    type Out;
    fn read<'de, D: Deserializer<'de>>(self, ctx: &mut Ctx, d: D) -> Result<Self::Out, D::Error>;
}

/// A message read key by key.
pub(super) trait Message: Default {
    /// Each field's (lowerCamelCase, snake_case) key. The first names it in paths and in
    /// `read`; given both, the first wins, whatever their order.
    const FIELDS: &'static [(&'static str, &'static str)];

    /// Reads the value of field `v.name()` into `self`.
    fn read<'de, A: MapAccess<'de>>(&mut self, v: Field<'_, '_, A>) -> Result<(), A::Error>;
}

/// The value of a known field, its key just read.
pub(super) struct Field<'a, 'c, A> {
    map: &'a mut A,
    ctx: &'c mut Ctx,
    name: &'static str,
}

impl<'de, A: MapAccess<'de>> Field<'_, '_, A> {
    pub(super) fn name(&self) -> &'static str {
        self.name
    }

    /// `None` when the value is `null`.
    pub(super) fn read<K: Kind>(self, kind: K) -> Result<Option<K::Out>, A::Error> {
        self.seed(kind, true)
    }

    /// `null` is the default.
    pub(super) fn or_default<K: Kind>(self, kind: K) -> Result<K::Out, A::Error>
    where
        K::Out: Default,
    {
        Ok(self.read(kind)?.unwrap_or_default())
    }

    /// `null` is the empty list.
    pub(super) fn list<K: Kind>(self, kind: K) -> Result<Vec<K::Out>, A::Error> {
        Ok(self.seed(List(kind), false)?.unwrap_or_default())
    }

    /// Like `read`, without the depth check (as the reader before this one did).
    pub(super) fn unchecked<K: Kind>(self, kind: K) -> Result<Option<K::Out>, A::Error> {
        self.seed(kind, false)
    }

    /// A key that names a field the message knows but reads no longer.
    pub(super) fn skip(self) -> Result<(), A::Error> {
        self.map.next_value::<IgnoredAny>().map(|_| ())
    }

    fn seed<K: Kind>(self, kind: K, checked: bool) -> Result<Option<K::Out>, A::Error> {
        self.map.next_value_seed(FieldSeed {
            name: self.name,
            checked,
            kind,
            ctx: self.ctx,
        })
    }
}

/// A field's value: `null`, or the value of `kind` read under the field's step.
struct FieldSeed<'c, K> {
    name: &'static str,
    checked: bool,
    kind: K,
    ctx: &'c mut Ctx,
}

impl<'de, K: Kind> DeserializeSeed<'de> for FieldSeed<'_, K> {
    type Value = Option<K::Out>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, K: Kind> Visitor<'de> for FieldSeed<'_, K> {
    type Value = Option<K::Out>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a value for {}", self.name)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.ctx.enter(self.name, self.checked)?;
        let v = self.kind.read(self.ctx, d)?;
        self.ctx.leave();
        Ok(Some(v))
    }
}

/// A message, read by [`Message::read`] field by field.
pub(super) struct Msg<M>(PhantomData<M>);

impl<M> Msg<M> {
    pub(super) fn new() -> Self {
        Msg(PhantomData)
    }
}

impl<M> Clone for Msg<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Msg<M> {}

impl<M: Message> Kind for Msg<M> {
    type Out = M;
    fn read<'de, D: Deserializer<'de>>(self, ctx: &mut Ctx, d: D) -> Result<M, D::Error> {
        d.deserialize_map(MsgVisitor::<M> {
            ctx,
            message: PhantomData,
        })
    }
}

struct MsgVisitor<'c, M> {
    ctx: &'c mut Ctx,
    message: PhantomData<M>,
}

impl<'de, M: Message> Visitor<'de> for MsgVisitor<'_, M> {
    type Value = M;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<M, A::Error> {
        const { assert!(M::FIELDS.len() <= 64) };
        let mut m = M::default();
        // Bit i: field i was given by its lowerCamelCase key, so its snake_case key is
        // not read (the reader before this one looked the first up first).
        let mut by_camel = 0u64;
        while let Some(key) = map.next_key_seed(KeySeed(M::FIELDS))? {
            let Some((i, name, camel)) = key else {
                // Unknown: skipped token by token, nothing built.
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let bit = 1u64 << i;
            if !camel && by_camel & bit != 0 {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if camel {
                by_camel |= bit;
            }
            m.read(Field {
                map: &mut map,
                ctx: &mut *self.ctx,
                name,
            })?;
        }
        Ok(m)
    }
}

/// A key: (index of the field, its lowerCamelCase name, whether given so), or `None`
/// for a key the message does not have.
struct KeySeed(&'static [(&'static str, &'static str)]);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<(usize, &'static str, bool)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Option<(usize, &'static str, bool)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .iter()
            .enumerate()
            .find(|(_, (camel, snake))| key == *camel || key == *snake)
            .map(|(i, (camel, _))| (i, *camel, key == *camel)))
    }
}

/// A list of `K`s.
#[derive(Clone, Copy)]
struct List<K>(K);

impl<K: Kind> Kind for List<K> {
    type Out = Vec<K::Out>;
    fn read<'de, D: Deserializer<'de>>(self, ctx: &mut Ctx, d: D) -> Result<Self::Out, D::Error> {
        d.deserialize_seq(ListVisitor { kind: self.0, ctx })
    }
}

struct ListVisitor<'c, K> {
    kind: K,
    ctx: &'c mut Ctx,
}

impl<'de, K: Kind> Visitor<'de> for ListVisitor<'_, K> {
    type Value = Vec<K::Out>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element_seed(Item {
            index: out.len(),
            kind: self.kind,
            ctx: &mut *self.ctx,
        })? {
            self.ctx.push(&mut out, item)?;
        }
        Ok(out)
    }
}

/// An element of a list; `null` is not the default here, but an error.
struct Item<'c, K> {
    index: usize,
    kind: K,
    ctx: &'c mut Ctx,
}

impl<'de, K: Kind> DeserializeSeed<'de> for Item<'_, K> {
    type Value = K::Out;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K::Out, D::Error> {
        self.ctx.at_index(self.index)?;
        self.kind.read(self.ctx, d)
    }
}
