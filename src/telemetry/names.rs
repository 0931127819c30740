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

/// eBPF program load attempts. Labels: `program`, `outcome` (`success`, `failure`).
pub const EBPF_PROGRAM_LOADS: &str = "stackline_ebpf_program_loads_total";
/// Failed loads. Labels: `program`, `errno` (e.g. `EACCES`), `reason`.
pub const EBPF_PROGRAM_LOAD_FAILURES: &str = "stackline_ebpf_program_load_failures_total";
/// Failed attaches to perf events. Labels: `program`, `errno`.
pub const EBPF_ATTACH_FAILURES: &str = "stackline_ebpf_attach_failures_total";
/// Size of the last verifier log kept, in bytes. Label: `program`.
pub const EBPF_VERIFIER_LOG_BYTES: &str = "stackline_ebpf_verifier_log_bytes";
/// Loads whose verifier log was cut at `max_size`. Label: `program`.
pub const EBPF_VERIFIER_LOG_TRUNCATED: &str = "stackline_ebpf_verifier_log_truncated_total";
/// Instructions the verifier processed in the last load (needs a log level or stats). Label: `program`.
pub const EBPF_VERIFIER_INSNS: &str = "stackline_ebpf_verifier_instructions_processed";
/// Verifier states in the last load. Labels: `program`, `kind` (`total`, `peak`).
pub const EBPF_VERIFIER_STATES: &str = "stackline_ebpf_verifier_states";
/// Verification time of the last load, in seconds. Label: `program`.
pub const EBPF_VERIFIER_SECONDS: &str = "stackline_ebpf_verifier_time_seconds";
/// CPU samples received from the kernel.
pub const EBPF_SAMPLES: &str = "stackline_ebpf_samples_total";
/// Samples, or parts of them, lost. Label: `reason`.
pub const EBPF_SAMPLES_LOST: &str = "stackline_ebpf_samples_lost_total";
/// Cumulative run time of the program in the kernel, in seconds, as the kernel counts it
/// (only while `kernel.bpf_stats_enabled` = 1). Label: `program`.
pub const EBPF_PROGRAM_RUN_SECONDS: &str = "stackline_ebpf_program_run_time_seconds";
/// Cumulative runs of the program (while `kernel.bpf_stats_enabled` = 1). Label: `program`.
pub const EBPF_PROGRAM_RUNS: &str = "stackline_ebpf_program_runs_total";

/// Locations the symbolizer handled. Labels: `result` (`resolved`, `unresolved`), `reason`.
pub const SYMBOLIZER_FRAMES: &str = "stackline_symbolizer_frames_total";
/// Locations answered from the symbolizer's cache.
pub const SYMBOLIZER_CACHE_HITS: &str = "stackline_symbolizer_cache_hits_total";
/// Locations the symbolizer had to resolve.
pub const SYMBOLIZER_CACHE_MISSES: &str = "stackline_symbolizer_cache_misses_total";
/// Time to symbolize one request, in seconds.
pub const SYMBOLIZER_DURATION: &str = "stackline_symbolizer_duration_seconds";
