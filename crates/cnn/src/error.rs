//! The engine's one error type. Every variant names what was at fault: the layer, the file,
//! the argument. The library never panics on data it was handed; it returns one of these.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A layer does not fit the shape of its input. Nodes of a plain stack are named by their
    /// index (`layer 2 (conv 8@15x15) ...`), others by their path (`layer `layer1.0.conv1`...`).
    #[error(
        "layer {} ({kind}) does not fit its input {input}: {reason}",
        display_node(node)
    )]
    Shape {
        node: String,
        kind: String,
        input: String,
        reason: String,
    },
    /// An architecture (notation, preset name, or stored JSON) that cannot be understood.
    #[error("architecture: {0}")]
    Architecture(String),
    /// A file that exists but whose contents are wrong: bad magic number, truncated, foreign...
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// An operating-system error while reading or writing a file. Not a `source`: the message
    /// already holds it, and a chain printed whole would repeat it.
    #[error("{}: {}", path.display(), describe_io(error))]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// An argument or setting out of its range.
    #[error("{0}")]
    Invalid(String),
}

fn display_node(node: &str) -> String {
    if node.bytes().all(|b| b.is_ascii_digit()) {
        node.to_string()
    } else {
        format!("`{node}`")
    }
}

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }
}

/// An I/O error as a person reads it: `No such file or directory`, without Rust's
/// ` (os error 2)`.
pub fn describe_io(error: &std::io::Error) -> String {
    let text = error.to_string();
    match (error.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_string(),
        _ => text,
    }
}

pub type Result<T> = std::result::Result<T, Error>;
