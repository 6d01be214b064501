//! Text from files (class names from a model or a folder, file names) made safe to print: a
//! terminal takes escape sequences in it as commands, so control characters are shown
//! escaped instead (`\u{1b}`).

use std::borrow::Cow;

/// `text` with every control character escaped.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// `text` on one line: new lines and tabs become spaces, other control characters are
/// escaped.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let spaced: String = text
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    Cow::Owned(escaped(&spaced).into_owned())
}

/// `text` for HTML, element content or a quoted attribute.
pub fn html_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("T-shirt/top"), "T-shirt/top");
        assert_eq!(escaped("café"), "café");
        assert_eq!(escaped("\u{1b}[2Jx"), "\\u{1b}[2Jx");
        assert_eq!(one_line("a\nb\tc\u{7}"), "a b c\\u{7}");
    }
}
