//! OTLP samples → folded stacks (`root;…;leaf count`), the input of flamegraph tools.
//! A frame reads `function (file:line)` when symbolized, `module+0xoffset` otherwise;
//! inlined functions are frames of their own; kernel frames end in `_[k]`.

use crate::otlp::semconv;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::otlp::ProfilesRequest;
use crate::otlp::profiles::Location;
use crate::otlp::view::{self, Dict, as_text, weight};

/// Aggregated stacks of one request.
#[derive(Debug, Default)]
pub struct FoldedStacks {
    /// Folded stack → summed sample weight.
    pub lines: BTreeMap<String, i64>,
    pub host: String,
    pub start_unix_nano: u64,
    pub duration_nano: u64,
    pub total: i64,
}

impl FoldedStacks {
    /// `stack count` lines, sorted by stack.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().map(|(s, n)| format!("{s} {n}")).collect()
    }

    pub fn title(&self) -> String {
        let start = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.start_unix_nano);
        let mut t = format!(
            "CPU profile: {} samples, {} + {:.1}s",
            self.total,
            humantime::format_rfc3339_seconds(start),
            self.duration_nano as f64 / 1e9
        );
        if !self.host.is_empty() {
            t = format!("{} on {t}", self.host);
        }
        t
    }
}

/// A frame label without the characters the folded format reserves.
fn clean(s: &str) -> String {
    s.replace(';', ":").replace(['\n', '\r'], " ")
}

/// Frames of one location, root-most first (the function, then what was inlined into it).
fn frames(d: Dict, l: &Location, kernel: bool, out: &mut Vec<String>) {
    let suffix = if kernel { "_[k]" } else { "" };
    let named: Vec<String> = l
        .lines
        .iter()
        .rev()
        .filter_map(|line| {
            let f = d.function(line.function_index)?;
            let name = d.string(f.name_strindex);
            if name.is_empty() {
                return None;
            }
            let file = d.string(f.filename_strindex);
            let file = Path::new(file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Some(if file.is_empty() || line.line <= 0 {
                format!("{}{suffix}", clean(name))
            } else {
                format!("{} ({}:{}){suffix}", clean(name), clean(&file), line.line)
            })
        })
        .collect();
    if !named.is_empty() {
        out.extend(named);
        return;
    }
    let (module, offset) = match d.mapping(l.mapping_index) {
        Some(m) => {
            let f = d.string(m.filename_strindex);
            let base = Path::new(f)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| f.to_owned());
            let off = if m.memory_start <= l.address && l.address < m.memory_limit {
                (l.address - m.memory_start).saturating_add(m.file_offset)
            } else {
                l.address
            };
            (
                if base.is_empty() {
                    "[unknown]".to_owned()
                } else {
                    base
                },
                off,
            )
        }
        None => ("[unknown]".to_owned(), l.address),
    };
    out.push(format!("{}+{offset:#x}{suffix}", clean(&module)));
}

/// Folds every sample of `req`; with `per_process`, each stack starts at a frame
/// naming its process (`exe [pid]`).
pub fn fold(req: &ProfilesRequest, per_process: bool) -> FoldedStacks {
    let d = Dict::of(req);
    let mut out = FoldedStacks::default();
    let frame_type = |l: &Location| d.is_kernel_frame(&l.attribute_indices);
    out.host = req
        .resource_profiles
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == semconv::HOST_NAME)
        .and_then(|kv| kv.value.as_ref().and_then(as_text))
        .unwrap_or_default();
    let mut start = u64::MAX;
    let mut end = 0;
    // Weights by (stack, attributes when per process) first; each distinct one is then
    // folded into a line once, so the work is linear in samples plus distinct stacks.
    let mut weights: HashMap<(i32, &[i32]), i64> = HashMap::new();
    for p in view::profiles(req) {
        if p.time_unix_nano > 0 {
            start = start.min(p.time_unix_nano);
            end = end.max(p.time_unix_nano.saturating_add(p.duration_nano));
        }
        for s in &p.samples {
            let attrs: &[i32] = if per_process {
                &s.attribute_indices
            } else {
                &[]
            };
            let w = weights.entry((s.stack_index, attrs)).or_default();
            *w = w.saturating_add(weight(s));
        }
    }
    let mut parts: Vec<String> = Vec::new();
    for ((stack, attrs), w) in weights {
        parts.clear();
        if per_process {
            let (pid, exe) = d.process(attrs);
            let name = exe
                .or_else(|| {
                    d.find_attribute(attrs, semconv::THREAD_NAME)
                        .and_then(as_text)
                })
                .unwrap_or_else(|| "[unknown]".into());
            parts.push(format!("{} [{pid}]", clean(&name)));
        }
        for &li in d.stack(stack).iter().rev() {
            if let Some(l) = d.location(li) {
                frames(d, l, frame_type(l), &mut parts);
            }
        }
        if parts.is_empty() {
            parts.push("[no stack]".into());
        }
        let line = out.lines.entry(parts.join(";")).or_default();
        *line = line.saturating_add(w);
        out.total = out.total.saturating_add(w);
    }
    if start != u64::MAX {
        out.start_unix_nano = start;
        out.duration_nano = end - start;
    }
    out
}
