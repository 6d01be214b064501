//! `cnn`: train, evaluate, run and look inside convolutional networks. A thin layer over the
//! `cnn` engine: it parses arguments, shows progress, and prints results.

mod arch_arg;
mod commands;
mod grid;
mod inside;
mod plot;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cnn",
    version,
    about = "Convolutional neural networks: train, eval, predict, explain, serve"
)]
struct Cli {
    /// Worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network and save it as a safetensors model file.
    Train(Box<commands::train::TrainArgs>),
    /// Measure a model's accuracy on a data set's test split.
    Eval(commands::eval::EvalArgs),
    /// Classify image files with a model.
    Predict(commands::predict::PredictArgs),
    /// Show what a network computes, layer by layer (the seed's worked example with --example).
    Explain(commands::explain::ExplainArgs),
    /// Measure training and inference speed, memory and GFLOP/s of an architecture.
    Bench(commands::bench::BenchArgs),
    /// Serve a web playground: draw and see the prediction and every layer's feature maps.
    Serve(commands::serve::ServeArgs),
}

fn main() -> ExitCode {
    // A panic is a bug, but even then the user gets one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("error: internal error: {message} (please report this)");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first} (see `cnn --help`)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("error: {}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = match cli.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start {threads} threads: {e}"))?;
    pool.install(|| match cli.command {
        Command::Train(args) => commands::train::run(*args, threads),
        Command::Eval(args) => commands::eval::run(args),
        Command::Predict(args) => commands::predict::run(args),
        Command::Explain(args) => commands::explain::run(args),
        Command::Bench(args) => commands::bench::run(args, threads),
        Command::Serve(args) => commands::serve::run(args, threads),
    })
}
