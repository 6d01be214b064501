//! Helpers shared by the CLI's test files.

/// Fails with the command's stderr unless it exited successfully.
#[track_caller]
pub fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
