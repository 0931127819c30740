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
}

fn main() -> ExitCode {
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
            match rt.block_on(service::run(&cli.config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
