//! Every metric name Stackline emits, spelled once, with the help text Prometheus shows.
//!
//! Pipeline metrics use the OpenTelemetry Collector's names and labels, so dashboards
//! and alerts written for the collector work unchanged. Counters end in `_total`.
//! Each entry's doc comment is also its `# HELP` line (see [`describe`]).

macro_rules! metric_names {
    ($( $(#[doc = $doc:literal])+ $kind:ident $name:ident = $value:literal; )*) => {
        $( $(#[doc = $doc])+ pub const $name: &str = $value; )*

        /// Registers the help text of every metric with the installed recorder.
        pub fn describe() {
            $( metric_names!(@describe $kind, $value, concat!($($doc),+)); )*
        }

        /// Every metric name with its kind and help text (for tests and docs).
        pub const ALL: &[(&str, &str, &str)] = &[
            $( ($value, stringify!($kind), concat!($($doc),+)), )*
        ];
    };
    (@describe counter, $n:expr, $h:expr) => { metrics::describe_counter!($n, $h.trim()) };
    (@describe gauge, $n:expr, $h:expr) => { metrics::describe_gauge!($n, $h.trim()) };
    (@describe histogram, $n:expr, $h:expr) => { metrics::describe_histogram!($n, $h.trim()) };
}

metric_names! {
    /// Samples a receiver accepted into its pipelines. Labels: `receiver`, `transport`.
    counter RECEIVER_ACCEPTED = "otelcol_receiver_accepted_profile_samples_total";
    /// Samples a receiver refused (bad request, limits, pipeline gone, shutting down). Labels: `receiver`, `transport`, `reason`.
    counter RECEIVER_REFUSED = "otelcol_receiver_refused_profile_samples_total";
    /// Samples a processor refused to a client that was told to retry (the memory_limiter's, for the OTLP receiver). Label: `processor`.
    counter PROCESSOR_REFUSED = "otelcol_processor_refused_profile_samples_total";
    /// Samples into a processor. Label: `processor`.
    counter PROCESSOR_INCOMING = "otelcol_processor_incoming_items_total";
    /// Samples out of a processor. Label: `processor`.
    counter PROCESSOR_OUTGOING = "otelcol_processor_outgoing_items_total";
    /// Samples an exporter took from its pipelines: each ends up sent, failed, dropped, or kept in a persistent queue. Label: `exporter`.
    counter EXPORTER_ACCEPTED = "stackline_exporter_accepted_profile_samples_total";
    /// Samples an exporter delivered. Label: `exporter`.
    counter EXPORTER_SENT = "otelcol_exporter_sent_profile_samples_total";
    /// Samples an exporter gave up on (permanent error, rejected by the backend, retries exhausted, shutdown deadline). Label: `exporter`.
    counter EXPORTER_SEND_FAILED = "otelcol_exporter_send_failed_profile_samples_total";
    /// Samples dropped because the sending queue was full. Label: `exporter`.
    counter EXPORTER_ENQUEUE_FAILED = "otelcol_exporter_enqueue_failed_profile_samples_total";
    /// Requests waiting in the sending queue. Label: `exporter`.
    gauge EXPORTER_QUEUE_SIZE = "otelcol_exporter_queue_size";
    /// Capacity of the sending queue, in requests. Label: `exporter`.
    gauge EXPORTER_QUEUE_CAPACITY = "otelcol_exporter_queue_capacity";
    /// Bytes a persistent sending queue holds on disk. Label: `exporter`.
    gauge EXPORTER_QUEUE_BYTES = "stackline_exporter_queue_bytes";
    /// Capacity of a persistent sending queue, in bytes. Label: `exporter`.
    gauge EXPORTER_QUEUE_CAPACITY_BYTES = "stackline_exporter_queue_capacity_bytes";
    /// Samples a persistent sending queue found on disk at start and sends again. Label: `exporter`.
    counter EXPORTER_QUEUE_REPLAYED = "stackline_exporter_queue_replayed_samples_total";
    /// Records of a persistent sending queue that were corrupt or torn and skipped. Label: `exporter`.
    counter EXPORTER_QUEUE_CORRUPT = "stackline_exporter_queue_corrupt_records_total";
    /// Connections open on an HTTP listener. Label: `listener` (`otlp/http`, `otlp/grpc`, `telemetry`, `pprof`).
    gauge HTTP_CONNECTIONS = "stackline_http_connections";
    /// Connections a listener closed: at once, all being taken (`too_many_connections`); idle, to make room for a new one (`idle_evicted`); whose TLS handshake failed or timed out (`tls_handshake`); that sent nothing within the handshake time (`silent`). Labels: `listener`, `reason`.
    counter HTTP_CONNECTIONS_REFUSED = "stackline_http_connections_refused_total";
    /// Addresses a `dns:///` endpoint resolved to, by state (`healthy`, or `down` after a failed attempt, until it is tried again). Labels: `exporter`, `state`.
    gauge EXPORTER_ENDPOINTS = "stackline_exporter_endpoints";
    /// Requests sent to each resolved address of a `dns:///` endpoint. Labels: `exporter`, `address`.
    counter EXPORTER_ENDPOINT_REQUESTS = "stackline_exporter_endpoint_requests_total";
    /// Profiles a backend rejected in a partial success answer. Label: `exporter`.
    counter EXPORTER_REJECTED_PROFILES = "stackline_exporter_rejected_profiles_total";

    /// Samples dropped inside the pipeline itself. Labels: `component`, `reason` (`panic`, `shutdown_deadline`, `downstream_stopped`, `stage_gone`, `memory_limit`, `queue_write_failed`, `pull_window_full`: `pipeline::stage::DropReason`).
    counter PIPELINE_DROPPED = "stackline_pipeline_dropped_samples_total";
    /// 1 while a memory_limiter refuses data (resident memory above its soft limit), else 0. Label: `component`.
    gauge MEMORY_LIMITER_REFUSING = "stackline_memory_limiter_refusing";
    /// Resident memory of the process as the memory_limiter last measured it, in bytes. Label: `component`.
    gauge MEMORY_LIMITER_RSS = "stackline_memory_limiter_rss_bytes";
    /// Panics caught in a component; the request it held is counted as dropped and the component keeps serving. Label: `component`.
    counter COMPONENT_PANICS = "stackline_component_panics_total";
    /// 1 while a component is running, 0 while it is starting, unhealthy, stopping or dead. Label: `component`.
    gauge COMPONENT_HEALTHY = "stackline_component_healthy";
    /// Always 1; label `version`.
    gauge BUILD_INFO = "stackline_build_info";

    /// eBPF program load attempts. Labels: `program`, `outcome` (`success`, `failure`).
    counter EBPF_PROGRAM_LOADS = "stackline_ebpf_program_loads_total";
    /// Failed loads. Labels: `program` (the refused program, else the entry program), `errno` (the kernel's answer, e.g. `EACCES`, `EINVAL`, `EPERM` for missing capabilities; `errno_N` for one without a name here; `none` where the kernel was not asked: a broken object), `reason` (`verifier_rejected`, `permission_denied`, `too_large`, `invalid`, `no_space`, `out_of_memory`, `other` for a refused program; `maps`, `missing_capabilities`, `object`, `config` (settings the program cannot take)).
    counter EBPF_PROGRAM_LOAD_FAILURES = "stackline_ebpf_program_load_failures_total";
    /// Failed attaches to perf events. Labels: `program`, `errno`.
    counter EBPF_ATTACH_FAILURES = "stackline_ebpf_attach_failures_total";
    /// Size of the last verifier log kept, in bytes. Label: `program`.
    gauge EBPF_VERIFIER_LOG_BYTES = "stackline_ebpf_verifier_log_bytes";
    /// Loads whose verifier log was cut at `max_size`. Label: `program`.
    counter EBPF_VERIFIER_LOG_TRUNCATED = "stackline_ebpf_verifier_log_truncated_total";
    /// Instructions the verifier processed in the last load (needs a log level or stats). Label: `program`.
    gauge EBPF_VERIFIER_INSNS = "stackline_ebpf_verifier_instructions_processed";
    /// Verifier states in the last load. Labels: `program`, `kind` (`total`, `peak`).
    gauge EBPF_VERIFIER_STATES = "stackline_ebpf_verifier_states";
    /// Verification time of the last load, in seconds. Label: `program`.
    gauge EBPF_VERIFIER_SECONDS = "stackline_ebpf_verifier_time_seconds";
    /// CPU samples received from the kernel.
    counter EBPF_SAMPLES = "stackline_ebpf_samples_total";
    /// Samples, or parts of them, lost. Label: `reason`: `ring_buffer_full`, `user_stack_unreadable`, `kernel_stack_unreadable`, `process_exited_before_maps_read`, `frame_outside_any_mapping`, `undecodable`, `invalid_profile` (a profile the receiver built failed the index check: a bug).
    counter EBPF_SAMPLES_LOST = "stackline_ebpf_samples_lost_total";
    /// Cumulative run time of the program in the kernel, in seconds, as the kernel counts it (only while `kernel.bpf_stats_enabled` = 1). Label: `program`: `stackline_sample` (per sample, its tail-called walkers included), `stackline_exec`, `stackline_rename`, `stackline_exit` and `stackline_cgroup` (per exec, task rename, thread end and cgroup move; updated once an interval).
    gauge EBPF_PROGRAM_RUN_SECONDS = "stackline_ebpf_program_run_time_seconds";
    /// Cumulative runs of the program (while `kernel.bpf_stats_enabled` = 1). Label: `program`, as for the run time.
    counter EBPF_PROGRAM_RUNS = "stackline_ebpf_program_runs_total";
    /// Kernel memory of each BPF map the programs use (ring buffers, mapping index, per-CPU state; the unwind tables' own arrays are `stackline_ebpf_unwind_table_bytes`), in bytes. Label: `map`.
    gauge EBPF_MAP_MEMORY = "stackline_ebpf_map_memory_bytes";
    /// CPU time the whole process had used when the receiver read its first sample (loading and verifying included), in seconds.
    gauge EBPF_STARTUP_CPU_SECONDS = "stackline_ebpf_startup_cpu_seconds";

    /// Samples of processes a selection rule decided, by rule and result: `taken` (an include rule matched) or `skipped` (an exclude rule matched; skipped in the kernel before any walk, or in user space for a process's first samples when the rule is on its executable, name, build ID or container). Labels: `rule`, `result`.
    counter EBPF_SELECTION_SAMPLES = "stackline_ebpf_selection_samples_total";
    /// Samples skipped by selection, by why: `not_selected` (include rules exist and none matched; skipped in the kernel before any walk, or dropped in user space for a process's first samples when the deciding rule is one only user space evaluates), `budget` (over the target's samples per second) and `paused` (probabilistic profiling's interval off), both in the kernel. Label: `reason`.
    counter EBPF_SELECTION_SKIPPED = "stackline_ebpf_selection_skipped_total";
    /// Live processes each rule matches, among those the program has a verdict on under the current rules (processes it sampled or skipped; at most 16,384 are remembered). Label: `rule`.
    gauge EBPF_SELECTION_PROCESSES = "stackline_ebpf_selection_processes";
    /// Samples skipped over budget, by target: `process/<executable name>` or `cgroup/<path>` (the budget's `per`). Label: `target`.
    counter EBPF_SELECTION_BUDGET_SKIPPED = "stackline_ebpf_selection_budget_skipped_total";
    /// Report intervals of probabilistic profiling, by whether they were sampled. Label: `sampled` (`true`, `false`).
    counter EBPF_PROBABILISTIC_INTERVALS = "stackline_ebpf_probabilistic_intervals_total";
    /// Selection reloads (SIGHUP), by result: `applied`, `failed`. Label: `result`.
    counter EBPF_SELECTION_RELOADS = "stackline_ebpf_selection_reloads_total";

    /// Native stack walks that ended, by why: `complete`, `truncated` (max_frames), `no_mapping`, `no_table`, `invalid_rule`, `read_fault`. Label: `reason`.
    counter EBPF_UNWIND_STOPS = "stackline_ebpf_unwind_stops_total";
    /// User frames walked natively, by how: `eh_frame` (unwind table) or `frame_pointer` (code without a table). Label: `method`.
    counter EBPF_UNWIND_FRAMES = "stackline_ebpf_unwind_frames_total";
    /// Kernel memory the loaded unwind tables take, in bytes (rows and page index).
    gauge EBPF_UNWIND_TABLE_BYTES = "stackline_ebpf_unwind_table_bytes";
    /// Executables whose unwind tables are loaded.
    gauge EBPF_UNWIND_TABLES = "stackline_ebpf_unwind_tables";
    /// Unwind tables built, by result: `loaded`, `no_frames` (no .eh_frame), `unreadable`, `too_large`, `map_full`. Label: `result`.
    counter EBPF_UNWIND_TABLE_BUILDS = "stackline_ebpf_unwind_table_builds_total";
    /// Time to build one executable's unwind table, in seconds.
    histogram EBPF_UNWIND_TABLE_BUILD_SECONDS = "stackline_ebpf_unwind_table_build_seconds";
    /// Unwind tables waiting to be built.
    gauge EBPF_UNWIND_TABLES_PENDING = "stackline_ebpf_unwind_tables_pending";
    /// Unwind tables evicted, least recently used first, to stay within `unwind.max_memory`.
    counter EBPF_UNWIND_TABLE_EVICTIONS = "stackline_ebpf_unwind_table_evictions_total";
    /// Executable mappings left out of the unwind index, by reason: `process_cap` (one process past its share of the index), `index_full`; tried again at the process's next read. Label: `reason`.
    counter EBPF_UNWIND_MAPPINGS_REFUSED = "stackline_ebpf_unwind_mappings_refused_total";
    /// Requests from the eBPF program for unwind information, by result: `sent`, `lost` (ring buffer full). Label: `result`.
    counter EBPF_UNWIND_EVENTS = "stackline_ebpf_unwind_events_total";

    /// Locations the symbolizer handled. Labels: `result` (`resolved`, `unresolved`), `reason`.
    counter SYMBOLIZER_FRAMES = "stackline_symbolizer_frames_total";
    /// Locations answered from the symbolizer's cache.
    counter SYMBOLIZER_CACHE_HITS = "stackline_symbolizer_cache_hits_total";
    /// Locations the symbolizer had to resolve.
    counter SYMBOLIZER_CACHE_MISSES = "stackline_symbolizer_cache_misses_total";
    /// Bytes of binaries the symbolizer copied into sealed memory before reading them, because their owner could shrink them under a memory mapping.
    counter SYMBOLIZER_COPIED_BYTES = "stackline_symbolizer_copied_bytes_total";
    /// Files with compressed debug sections given a decompressed copy on disk (`result="ok"`), or left to blazesym to decompress in memory because the copy could not be made: `unwritable` (decompress_dir), `too_large` (over 512 MiB), `invalid` (malformed sections).
    counter SYMBOLIZER_UNPACKED = "stackline_symbolizer_unpacked_files_total";
    /// Stripped binaries whose `.gnu_debuglink` was followed, once per file: `found` (a debug file in `debug_dirs` with the right CRC32, used), or symbolized without one: `not_found`, `crc_mismatch`, `invalid_name` (not a plain file name, or a malformed section), `unusable_file` (not a regular file, over 1 GiB, or unreadable). Label: `result`.
    counter SYMBOLIZER_DEBUGLINKS = "stackline_symbolizer_debuglinks_total";
    /// Time to symbolize one request, in seconds.
    histogram SYMBOLIZER_DURATION = "stackline_symbolizer_duration_seconds";
}

#[cfg(test)]
mod tests {
    /// `docs/metrics.md` is generated from [`super::ALL`]: the names and help texts
    /// above are the one place metrics are described.
    #[test]
    fn the_metrics_reference_in_docs_is_current() {
        let mut md = String::from(
            "# Metrics reference\n\nEvery metric Stackline serves on `/metrics`, with the help text Prometheus shows. \
             Generated from [`src/telemetry/names.rs`](../src/telemetry/names.rs) by its test \
             (`STACKLINE_BLESS=1 cargo test --lib the_metrics_reference` rewrites this file); \
             [telemetry.md](telemetry.md) says how to use them. Back to the [README](../README.md).\n\n\
             | metric | kind | meaning and labels |\n|---|---|---|\n",
        );
        for (name, kind, help) in super::ALL {
            md += &format!(
                "| `{name}` | {kind} | {} |\n",
                help.trim().replace('|', "\\|")
            );
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md");
        if std::env::var_os("STACKLINE_BLESS").is_some() {
            std::fs::write(&path, &md).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == md,
            "docs/metrics.md is not what src/telemetry/names.rs says: run `STACKLINE_BLESS=1 cargo test --lib the_metrics_reference` and commit it"
        );
    }
}
