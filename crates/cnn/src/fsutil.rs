//! Reading and writing files as untrusted input and precious output: only regular files are
//! read, never more than a limit; a file is written whole or not at all, and never over
//! something that is not a regular file (a device, a FIFO, a link, a folder).

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Reads the regular file at `path` whole, refusing anything else (a device such as
/// `/dev/zero`, a FIFO, a folder) and files of more than `max_bytes`, before reading them.
pub fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > max_bytes {
        return Err(too_large(path, len, max_bytes));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // One byte more than the limit tells a file that grew while being read.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(path, bytes.len() as u64, max_bytes));
    }
    Ok(bytes)
}

/// [`read_file`] for UTF-8 text.
pub fn read_text(path: &Path, max_bytes: u64) -> Result<String> {
    String::from_utf8(read_file(path, max_bytes)?).map_err(|_| Error::file(path, "not UTF-8 text"))
}

/// Opens the regular file at `path` for reading, with its length. Anything else is refused:
/// opened without blocking (a FIFO with no writer would block an ordinary open forever), then
/// checked on the open file, so a file swapped in between cannot get past the check.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let metadata = file.metadata().map_err(|e| Error::io(path, e))?;
    if !metadata.is_file() {
        return Err(Error::file(
            path,
            format!(
                "{}, not a regular file: refusing to read it",
                describe(&metadata.file_type())
            ),
        ));
    }
    Ok((file, metadata.len()))
}

fn too_large(path: &Path, len: u64, max_bytes: u64) -> Error {
    Error::file(
        path,
        format!("{len} bytes is over the limit of {max_bytes} bytes for this kind of file"),
    )
}

/// What a file that is not a regular file is, for messages.
fn describe(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a folder"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

/// Checks that a file may be written at `path`: nothing is there yet (in a folder that
/// exists), or a regular file (which is replaced). A device, a FIFO, a symbolic link or a
/// folder is refused, so that `--out /dev/null` as root cannot replace the device with a
/// model.
pub fn check_replaceable(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_file() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(folder) if !folder.is_dir() => Err(Error::file(
                    path,
                    format!("cannot write it: no folder {}", folder.display()),
                )),
                _ => Ok(()),
            }
        }
        Ok(metadata) => Err(Error::file(
            path,
            format!(
                "{} is there, not a regular file: refusing to replace it",
                describe(&metadata.file_type())
            ),
        )),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk, then renames it over
/// `path`. An interrupted write leaves the old file (or none), never a truncated one. A
/// target that exists and is not a regular file is refused ([`check_replaceable`]), and the
/// temporaries that writers killed before their rename left beside `path` are removed first.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    check_replaceable(path)?;
    let (directory, prefix) = temporary_prefix(path)?;
    remove_stale_temporaries(directory, &prefix);
    let temporary = directory.join(format!("{prefix}{}.tmp", std::process::id()));
    let result = (|| {
        // `create_new`: never through a link or over a file someone else put there.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temporary);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// The folder of `path` and the start of its temporaries' names: `.NAME.` (then the writer's
/// process id and `.tmp`).
fn temporary_prefix(path: &Path) -> Result<(&Path, String)> {
    let directory = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file name"))?;
    Ok((directory, format!(".{}.", name.to_string_lossy())))
}

/// How old a temporary must be before it is taken for stale where a writer's liveness cannot
/// be checked (no `/proc`).
const STALE_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Removes `directory/PREFIX<pid>.tmp` files whose writer is gone: its process no longer runs
/// (seen in `/proc`), or, without `/proc`, the file is older than [`STALE_AFTER`]. Best
/// effort: what cannot be listed or removed stays.
fn remove_stale_temporaries(directory: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    let proc_available = Path::new("/proc/self").exists();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        let stale = if proc_available {
            !PathBuf::from(format!("/proc/{pid}")).exists()
        } else {
            metadata
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > STALE_AFTER)
        };
        if stale && metadata.is_file() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_only_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"hello").unwrap();
        assert_eq!(read_file(&path, 5).unwrap(), b"hello");
        let error = read_file(&path, 4).unwrap_err().to_string();
        assert!(error.contains("over the limit of 4 bytes"), "{error}");
        let error = read_file(dir.path(), 100).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
        #[cfg(unix)]
        {
            let error = read_file(Path::new("/dev/zero"), 100)
                .unwrap_err()
                .to_string();
            assert!(error.contains("a device, not a regular file"), "{error}");
        }
    }

    #[test]
    fn writes_replace_regular_files_only_and_clean_stale_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let error = write_atomically(dir.path(), b"x").unwrap_err().to_string();
        assert!(error.contains("a folder is there"), "{error}");
        let error = write_atomically(&dir.path().join("missing/model"), b"x")
            .unwrap_err()
            .to_string();
        assert!(error.contains("no folder"), "{error}");

        // A temporary of a writer that no longer runs (no process has id u32::MAX), and one
        // of this process, which is alive.
        let stale = dir
            .path()
            .join(format!(".model.safetensors.{}.tmp", u32::MAX));
        let unrelated = dir.path().join(".other.safetensors.1.tmp");
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(&unrelated, b"half").unwrap();
        write_atomically(&path, b"three").unwrap();
        assert!(!stale.exists() || !Path::new("/proc/self").exists());
        assert!(unrelated.exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"three");

        #[cfg(unix)]
        {
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            let error = write_atomically(&link, b"x").unwrap_err().to_string();
            assert!(error.contains("a symbolic link is there"), "{error}");
            assert!(std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink());
            assert_eq!(std::fs::read(&path).unwrap(), b"three");
        }
    }
}
