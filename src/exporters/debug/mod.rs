//! `debug` exporter: logs what passes through, for trying a pipeline out.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::config::{Validate, parse_component};
use crate::otlp::{ProfilesRequest, sample_count};
use crate::pipeline::{Context, Exporter, ExporterFactory, Input, StartError};
use crate::telemetry::names;

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
        mut input: Input,
    ) -> Result<JoinHandle<()>, StartError> {
        let cfg = self.cfg;
        Ok(tokio::spawn(async move {
            let sent = metrics::counter!(names::EXPORTER_SENT, "exporter" => ctx.id.to_string());
            ctx.health.running();
            while let Some(req) = input.recv().await {
                let n = sample_count(&req);
                tracing::info!(
                    exporter = %ctx.id,
                    samples = n,
                    resources = req.resource_profiles.len(),
                    profiles = crate::otlp::view::profiles(&req).count(),
                    "profiles"
                );
                if cfg.verbosity >= Verbosity::Normal {
                    for line in describe_profiles(&req) {
                        tracing::info!(exporter = %ctx.id, "{line}");
                    }
                }
                if cfg.verbosity == Verbosity::Detailed {
                    for line in top_stacks(&req, cfg.top_stacks) {
                        tracing::info!(exporter = %ctx.id, "{line}");
                    }
                }
                sent.increment(n);
            }
            ctx.health.stopping();
        }))
    }
}

fn string(req: &ProfilesRequest, i: i32) -> &str {
    req.dictionary
        .as_ref()
        .and_then(|d| d.string_table.get(usize::try_from(i).ok()?))
        .map_or("", String::as_str)
}

fn describe_profiles(req: &ProfilesRequest) -> Vec<String> {
    let mut out = Vec::new();
    for p in crate::otlp::view::profiles(req) {
        let (t, u) = p.sample_type.map_or(("", ""), |vt| {
            (string(req, vt.type_strindex), string(req, vt.unit_strindex))
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

/// The heaviest stacks of a request, leaf first, by summed first value (1 per sample if none).
pub fn top_stacks(req: &ProfilesRequest, n: usize) -> Vec<String> {
    let Some(dict) = req.dictionary.as_ref() else {
        return Vec::new();
    };
    let mut weight: HashMap<i32, i64> = HashMap::new();
    for s in crate::otlp::view::profiles(req).flat_map(|p| &p.samples) {
        *weight.entry(s.stack_index).or_default() += s.values.first().copied().unwrap_or(1);
    }
    let mut stacks: Vec<_> = weight.into_iter().collect();
    stacks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    stacks
        .into_iter()
        .take(n)
        .map(|(si, w)| {
            let frames: Vec<String> = dict
                .stack_table
                .get(si as usize)
                .map(|s| s.location_indices.as_slice())
                .unwrap_or_default()
                .iter()
                .filter_map(|&li| dict.location_table.get(li as usize))
                .map(|loc| {
                    let name = loc
                        .lines
                        .first()
                        .and_then(|l| dict.function_table.get(l.function_index as usize))
                        .map(|f| string(req, f.name_strindex))
                        .unwrap_or("");
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
