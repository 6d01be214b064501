//! Command lines that are wrong in themselves: exit status 2 with clap's layout (the message,
//! the subcommand's usage, a pointer to its `--help`), and the colour choice.

use clap::error::ErrorKind;
use clap::{ColorChoice, CommandFactory};
use std::ffi::OsString;
use std::process::ExitCode;

/// An argument that clap accepted but the command refuses: a value out of its range, flags that
/// contradict each other or do not apply. Reported like clap's own errors, with exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `Err(UsageError(message))` as an [`anyhow::Error`].
pub fn usage_error<T>(message: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(message.into()).into())
}

/// Prints `message` as clap prints its errors, for subcommand `name`, and returns status 2.
pub fn exit(name: &str, color: ColorChoice, message: &str) -> ExitCode {
    let mut command = crate::Cli::command().color(color);
    command.build();
    let error = match command.find_subcommand_mut(name) {
        Some(sub) => sub.error(ErrorKind::ValueValidation, message),
        None => command.error(ErrorKind::ValueValidation, message),
    };
    let _ = error.print();
    ExitCode::from(2)
}

/// `--color WHEN` (or `--color=WHEN`) as written on the command line, read before clap parses
/// it, so that clap's own errors follow it too. Anything unreadable is left to clap.
pub fn color_choice(args: impl IntoIterator<Item = OsString>) -> ColorChoice {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut choice = ColorChoice::Auto;
    for (i, arg) in args.iter().enumerate() {
        if arg == "--" {
            break;
        }
        let value = match arg.strip_prefix("--color") {
            Some("") => args.get(i + 1).map(String::as_str),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        };
        match value {
            Some("always") => choice = ColorChoice::Always,
            Some("never") => choice = ColorChoice::Never,
            Some("auto") => choice = ColorChoice::Auto,
            _ => {}
        }
    }
    choice
}

/// Makes the terminal styling (progress bars, coloured grids) follow `choice`; `auto` leaves it
/// to the terminal test and `NO_COLOR`.
pub fn apply_color(choice: ColorChoice) {
    match choice {
        ColorChoice::Always => {
            console::set_colors_enabled(true);
            console::set_colors_enabled_stderr(true);
        }
        ColorChoice::Never => {
            console::set_colors_enabled(false);
            console::set_colors_enabled_stderr(false);
        }
        ColorChoice::Auto => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn color_is_read_in_both_spellings_and_not_after_a_double_dash() {
        let choice = |args: &[&str]| color_choice(args.iter().map(OsString::from));
        assert_eq!(choice(&["cnn", "--color", "never"]), ColorChoice::Never);
        assert_eq!(
            choice(&["cnn", "eval", "--color=always"]),
            ColorChoice::Always
        );
        assert_eq!(choice(&["cnn", "--", "--color=never"]), ColorChoice::Auto);
        assert_eq!(choice(&["cnn", "--color"]), ColorChoice::Auto);
    }
}
