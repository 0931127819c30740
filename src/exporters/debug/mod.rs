//! `debug` exporter: logs what passes through, for trying a pipeline out.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::config::{Validate, parse_component};
use crate::exporters::shell::{self, Outcome, Writer, WriterSettings};
use crate::otlp::view::{self, Dict};
use crate::otlp::{Checked, ProfilesRequest, sample_count};
use crate::pipeline::{Context, Exporter, ExporterFactory, Input, StartError};

/// `exporters.debug`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// `basic` (default): one line per batch with its counts. `normal`: adds the
    /// profiles' types. `detailed`: adds the batch's top stacks by sample value.
    pub verbosity: Verbosity,
    /// Stacks listed at `detailed`. Default 10.
    pub top_stacks: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verbosity {
    Basic,
    Normal,
    Detailed,
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig {
            verbosity: Verbosity::Basic,
            top_stacks: 10,
        }
    }
}

impl Validate for DebugConfig {}

pub fn factory() -> ExporterFactory {
    ExporterFactory {
        type_name: "debug",
        description: "logs each batch's sample count and, at `detailed`, its top stacks",
        create: |_, v| {
            Ok(Box::new(DebugExporter {
                cfg: parse_component(v)?,
            }))
        },
    }
}

pub struct DebugExporter {
    cfg: DebugConfig,
}

#[async_trait]
impl Exporter for DebugExporter {
    async fn start(
        self: Box<Self>,
        ctx: Context,
        input: Input,
    ) -> Result<JoinHandle<()>, StartError> {
        let w = DebugWriter {
            cfg: self.cfg,
            id: ctx.id.to_string(),
        };
        let again = w.clone();
        Ok(shell::start_writer(
            ctx,
            input,
            w,
            move || Ok(again.clone()),
            WriterSettings {
                flush_every: None,
                what: "the log",
            },
        ))
    }
}

#[derive(Clone)]
struct DebugWriter {
    cfg: DebugConfig,
    id: String,
}

impl Writer for DebugWriter {
    fn write(&mut self, req: Checked) -> Outcome {
        let n = sample_count(&req);
        tracing::info!(
            exporter = %self.id,
            samples = n,
            resources = req.resource_profiles.len(),
            profiles = view::profiles(&req).count(),
            "profiles"
        );
        if self.cfg.verbosity >= Verbosity::Normal {
            for line in describe_profiles(&req) {
                tracing::info!(exporter = %self.id, "{line}");
            }
        }
        if self.cfg.verbosity == Verbosity::Detailed {
            for line in top_stacks(&req, self.cfg.top_stacks) {
                tracing::info!(exporter = %self.id, "{line}");
            }
        }
        Outcome::sent(n)
    }
}

fn describe_profiles(req: &ProfilesRequest) -> Vec<String> {
    let d = Dict::of(req);
    let mut out = Vec::new();
    for p in view::profiles(req) {
        let (t, u) = p.sample_type.map_or(("", ""), |vt| {
            (d.string(vt.type_strindex), d.string(vt.unit_strindex))
        });
        out.push(format!(
            "profile: {} samples of {t}/{u}, period {}, duration {}ns",
            p.samples.len(),
            p.period,
            p.duration_nano
        ));
    }
    out
}

/// The heaviest stacks of a request, leaf first, by summed weight (values, else one per timestamp).
pub fn top_stacks(req: &ProfilesRequest, n: usize) -> Vec<String> {
    let d = Dict::of(req);
    let mut weight: HashMap<i32, i64> = HashMap::new();
    for s in view::profiles(req).flat_map(|p| &p.samples) {
        *weight.entry(s.stack_index).or_default() += view::weight(s);
    }
    let mut stacks: Vec<_> = weight.into_iter().collect();
    stacks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    stacks
        .into_iter()
        .take(n)
        .map(|(si, w)| {
            let frames: Vec<String> = d
                .stack(si)
                .iter()
                .filter_map(|&li| d.location(li))
                .map(|loc| {
                    let name = loc
                        .lines
                        .first()
                        .and_then(|l| d.function(l.function_index))
                        .map_or("", |f| d.string(f.name_strindex));
                    if name.is_empty() {
                        format!("{:#x}", loc.address)
                    } else {
                        name.to_owned()
                    }
                })
                .collect();
            format!("{w:>8}  {}", frames.join(" <- "))
        })
        .collect()
}
