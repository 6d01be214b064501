//! `cnn`: train, evaluate, run and look inside convolutional networks. A thin layer over the
//! `cnn` engine: it parses arguments, shows progress, and prints results.
//!
//! Exit status: 0 on success, 2 for a command line that is wrong in itself (clap's errors and
//! [`usage::UsageError`]), 1 for anything that fails while doing the work.

mod arch_arg;
mod commands;
mod gallery;
mod grid;
mod inside;
mod npy;
mod plot;
mod printable;
mod progress;
mod record;
mod train_job;
mod usage;

use clap::{ColorChoice, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cnn",
    version,
    about = "Convolutional neural networks: train, eval, predict, info, explain, bench, serve, export, import, run"
)]
pub struct Cli {
    /// Worker threads (default: one per core).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// No progress bars and no informational lines: only results, warnings and errors.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Colour in the output: auto (when writing to a terminal and NO_COLOR is not set),
    /// always or never.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    color: ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network and save it as a safetensors model file.
    Train(Box<commands::train::TrainArgs>),
    /// Measure a model's accuracy on a data set's test split.
    Eval(commands::eval::EvalArgs),
    /// Classify image files (or folders and globs of them) with a model.
    Predict(commands::predict::PredictArgs),
    /// Describe a model file: layers, classes, preprocessing, how it was trained.
    Info(commands::info::InfoArgs),
    /// Show what a network computes, layer by layer (the seed's worked example with --example).
    Explain(commands::explain::ExplainArgs),
    /// Measure training and inference speed, memory and GFLOP/s of an architecture.
    Bench(commands::bench::BenchArgs),
    /// Write a model for other runtimes: an ONNX file.
    Export(commands::export::ExportArgs),
    /// Read an ONNX model into a model file of this engine.
    Import(commands::import::ImportArgs),
    /// Run a model on raw tensors (NumPy .npy in and out), without preprocessing.
    Run(commands::run::RunArgs),
    /// Serve a web playground: draw and see the prediction and every layer's feature maps.
    Serve(commands::serve::ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) to stdout.
    Completions(commands::completions::CompletionsArgs),
    /// Print the manual page (roff) to stdout: `cnn man > cnn.1; man -l cnn.1`.
    Man,
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Train(_) => "train",
            Command::Eval(_) => "eval",
            Command::Predict(_) => "predict",
            Command::Info(_) => "info",
            Command::Explain(_) => "explain",
            Command::Bench(_) => "bench",
            Command::Export(_) => "export",
            Command::Import(_) => "import",
            Command::Run(_) => "run",
            Command::Serve(_) => "serve",
            Command::Completions(_) => "completions",
            Command::Man => "man",
        }
    }
}

/// What every subcommand may need from the global options.
#[derive(Clone, Copy, Debug)]
pub struct Global {
    pub threads: usize,
    pub quiet: bool,
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
    let color = usage::color_choice(std::env::args_os());
    usage::apply_color(color);
    let matches = match Cli::command().color(color).try_get_matches() {
        Ok(matches) => matches,
        // clap's own message, whole: what is missing, what conflicts, "did you mean", the
        // possible values, the usage; exit 2 (0 for --help and --version).
        Err(e) => e.exit(),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if !matches!(cli.command, Command::Serve(_)) {
        exit_quietly_on_broken_pipes();
    }
    let name = cli.command.name();
    let sub_matches = matches
        .subcommand_matches(name)
        .cloned()
        .unwrap_or_default();
    match run(cli, &sub_matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<usage::UsageError>() {
            Some(usage) => usage::exit(name, color, &usage.0),
            None => {
                eprintln!("error: {}", one_line(&e));
                ExitCode::FAILURE
            }
        },
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

fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let threads = match cnn::limits::threads(cli.threads.map(usize::from)) {
        Ok(threads) => threads,
        Err(e) => return usage::usage_error(e.to_string()),
    };
    let global = Global {
        threads,
        quiet: cli.quiet,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start {threads} threads: {e}"))?;
    pool.install(|| match cli.command {
        Command::Train(args) => commands::train::run(*args, matches, global),
        Command::Eval(args) => commands::eval::run(args, global),
        Command::Predict(args) => commands::predict::run(args, global),
        Command::Info(args) => commands::info::run(args),
        Command::Explain(args) => commands::explain::run(args, global),
        Command::Bench(args) => commands::bench::run(args, global),
        Command::Export(args) => commands::export::run(args, global),
        Command::Import(args) => commands::import::run(args, global),
        Command::Run(args) => commands::run::run(args, global),
        Command::Serve(args) => commands::serve::run(args, global),
        Command::Completions(args) => commands::completions::run(args),
        Command::Man => commands::completions::man(),
    })
}
