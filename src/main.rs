#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stackline::pipeline::Factories;
use stackline::service;

/// Stackline: a continuous-profiling collector (receivers → processors → exporters).
#[derive(Parser)]
#[command(name = "stackline", version, about)]
struct Cli {
    /// Configuration file; repeat to merge several (later files override earlier ones).
    /// Without it, a built-in default configuration runs.
    #[arg(long = "config", short = 'c', global = true, value_name = "FILE")]
    config: Vec<PathBuf>,
    /// Once the pipeline runs, write FILE (JSON: the pid and the address every listener
    /// bound, by config key). Useful with port 0 (`127.0.0.1:0`): the kernel picks a free
    /// port and FILE tells which. Removed on a clean exit.
    #[arg(long = "ready-file", value_name = "FILE")]
    ready_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check the configuration and print every error; exits non-zero if there is any.
    Validate,
    /// List the component types this binary provides.
    Components,
    /// Print the built-in default configuration.
    DefaultConfig,
    /// Load the eBPF profiler's program on this kernel (attaching nothing) and report,
    /// as JSON, whether it loaded and what its verifier log took. Exits 1 if it did not load.
    EbpfCheck {
        /// Verifier log level: 0|off, 1|branch, 2|instruction.
        #[arg(long, default_value = "0")]
        level: String,
        /// Add the verifier's statistics.
        #[arg(long)]
        stats: bool,
        /// First log buffer, e.g. 1KiB.
        #[arg(long, default_value = "64KiB")]
        size: String,
        /// Largest log buffer, e.g. 512MiB.
        #[arg(long, default_value = "512MiB")]
        max_size: String,
        /// Unwinding mode to load for: auto and eh_frame load the entry program and
        /// the unwinder, frame_pointer the entry program and the frame-pointer walker.
        #[arg(long, default_value = "auto")]
        unwind_mode: String,
        /// Write each program's verifier log to DIR/PROGRAM.log, also for a program
        /// the kernel refused.
        #[arg(long, value_name = "DIR", default_value = "")]
        output: String,
    },
}

fn main() -> ExitCode {
    stackline::host::one_malloc_arena();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate) => match service::validate(&cli.config) {
            Ok(warnings) => {
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                println!("configuration is valid");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Components) => {
            let f = Factories::builtin();
            println!("receivers:");
            for c in &f.receivers {
                println!("  {:<12} {}", c.type_name, c.description);
            }
            println!("processors:");
            for c in &f.processors {
                println!("  {:<12} {}", c.type_name, c.description);
            }
            println!("exporters:");
            for c in &f.exporters {
                println!("  {:<12} {}", c.type_name, c.description);
            }
            ExitCode::SUCCESS
        }
        Some(Command::EbpfCheck {
            level,
            stats,
            size,
            max_size,
            unwind_mode,
            output,
        }) => {
            // The same parsing and checks as the YAML settings.
            let output = serde_json::to_string(&output).unwrap_or_default();
            let yaml = format!(
                "receivers: {{ ebpf_profiler: {{ unwind: {{ mode: \"{unwind_mode}\" }}, verifier_log: {{ level: \"{level}\", stats: {stats}, size: \"{size}\", max_size: \"{max_size}\", output: {output} }} }} }}\nexporters: {{ debug: {{}} }}\nservice: {{ pipelines: {{ profiles: {{ receivers: [ebpf_profiler], exporters: [debug] }} }} }}\n"
            );
            let parsed = stackline::config::Config::from_yaml("ebpf-check", &yaml).and_then(|c| {
                let v = c
                    .receivers
                    .get("ebpf_profiler")
                    .cloned()
                    .unwrap_or_else(|| figment::value::Value::from(figment::value::Dict::new()));
                stackline::config::parse_component::<
                    stackline::receivers::ebpf_profiler::EbpfProfilerConfig,
                >(&v)
                .map_err(stackline::config::ConfigErrors)
            });
            let cfg = match parsed {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
            };
            let report = stackline::receivers::ebpf_profiler::check(&cfg.verifier_log, &cfg.unwind);
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            if report.loaded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(Command::DefaultConfig) => {
            print!("{}", service::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        None => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(service::run(&cli.config, cli.ready_file.as_deref())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
