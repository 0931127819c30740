//! Every metric name Stackline emits, spelled once.
//!
//! Pipeline metrics use the OpenTelemetry Collector's names and labels, so dashboards
//! and alerts written for the collector work unchanged. Counters end in `_total`.

/// Samples a receiver accepted into its pipelines. Labels: `receiver`, `transport`.
pub const RECEIVER_ACCEPTED: &str = "otelcol_receiver_accepted_profile_samples_total";
/// Samples a receiver refused (bad request, pipeline shut down). Labels: `receiver`, `transport`.
pub const RECEIVER_REFUSED: &str = "otelcol_receiver_refused_profile_samples_total";
/// Samples into a processor. Label: `processor`.
pub const PROCESSOR_INCOMING: &str = "otelcol_processor_incoming_items_total";
/// Samples out of a processor. Label: `processor`.
pub const PROCESSOR_OUTGOING: &str = "otelcol_processor_outgoing_items_total";
/// Samples an exporter delivered. Label: `exporter`.
pub const EXPORTER_SENT: &str = "otelcol_exporter_sent_profile_samples_total";
/// Samples an exporter gave up on (permanent error, retries exhausted, shutdown deadline). Label: `exporter`.
pub const EXPORTER_SEND_FAILED: &str = "otelcol_exporter_send_failed_profile_samples_total";
/// Samples dropped because the sending queue was full. Label: `exporter`.
pub const EXPORTER_ENQUEUE_FAILED: &str = "otelcol_exporter_enqueue_failed_profile_samples_total";
/// Requests waiting in the sending queue. Label: `exporter`.
pub const EXPORTER_QUEUE_SIZE: &str = "otelcol_exporter_queue_size";
/// Capacity of the sending queue, in requests. Label: `exporter`.
pub const EXPORTER_QUEUE_CAPACITY: &str = "otelcol_exporter_queue_capacity";

/// Samples dropped inside the pipeline itself. Labels: `component`, `reason`.
pub const PIPELINE_DROPPED: &str = "stackline_pipeline_dropped_samples_total";
/// Always 1; label `version`.
pub const BUILD_INFO: &str = "stackline_build_info";
