//! `cnn`: train, evaluate, run and look inside convolutional networks. A thin layer over the
//! `cnn` engine: it parses arguments, shows progress, and prints results.

mod arch_arg;
mod commands;
mod grid;
mod inside;
mod plot;
mod printable;
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
    if !matches!(cli.command, Command::Serve(_)) {
        exit_quietly_on_broken_pipes();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes as one line. A cause whose text the line already holds is left
/// out: an I/O error inside a message that quotes it (`PATH: No such file or directory`) would
/// otherwise be printed twice. Control characters from file names or model files are escaped.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    printable::one_line(&line).into_owned()
}

/// Lets a closed pipe end the process the way it ends `cat` (`cnn train | head -1`): by the
/// default action of SIGPIPE, silently, instead of a failed `println!`. Not for `serve`,
/// whose sockets must survive clients that hang up.
fn exit_quietly_on_broken_pipes() {
    // SAFETY: `signal` only sets the disposition of SIGPIPE; SIG_DFL is a valid one, and no
    // handler of the process is replaced (Rust's runtime set SIGPIPE to SIG_IGN, nothing more).
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = cnn::limits::threads(cli.threads)?;
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
