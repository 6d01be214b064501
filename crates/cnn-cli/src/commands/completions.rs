//! `cnn completions SHELL` and `cnn man`: the command line described for shells and for `man`,
//! generated from the same definitions clap parses with, so they cannot drift apart.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use std::io::Write;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: Shell,
}

/// Prints the completion script for the shell, e.g. `source <(cnn completions bash)`.
pub fn run(args: CompletionsArgs) -> Result<()> {
    let mut command = crate::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "cnn", &mut out);
    out.flush().context("cannot write the completions")
}

/// Prints the manual page in roff, with a section per subcommand.
pub fn man() -> Result<()> {
    let command = crate::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .context("cannot render the manual page")?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        // Each subcommand's synopsis and options, as `cnn SUB --help` shows them.
        let sub = sub.clone().bin_name(format!("cnn {}", sub.get_name()));
        let man = clap_mangen::Man::new(sub.clone());
        writeln!(page, ".SH \"CNN {}\"", sub.get_name().to_uppercase())?;
        if let Some(about) = sub.get_about() {
            writeln!(page, "{}", escape(&about.to_string()))?;
        }
        let mut options = Vec::new();
        man.render_options_section(&mut options)?;
        // The options section's own heading is replaced by the subcommand's.
        let options = String::from_utf8_lossy(&options).replacen(".SH OPTIONS", ".SS Options", 1);
        page.extend_from_slice(options.as_bytes());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&page)
        .and_then(|()| out.flush())
        .context("cannot write the manual page")
}

/// Text as a roff line: a leading `.` or `'` would read as a request.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\\\");
    if text.starts_with(['.', '\'']) {
        format!("\\&{text}")
    } else {
        text
    }
}
