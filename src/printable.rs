//! Makes messages safe to print on a terminal. Errors quote names and data from layers,
//! archives and mount options, which are hostile input: an ESC in a tar header would drive
//! the user's terminal, a newline would forge a second line of output. Every message that
//! rlayerfs prints on stderr goes through [`escape`] (or [`escape_lines`]) on its way out.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1) and every bidirectional formatting
/// character (which reorders what the terminal shows) written as an escape: `\n`, `\t`,
/// `\r`, `\x1b`, `\u{202e}`. Printable text, including non-ASCII letters, is kept.
///
/// Backslashes are kept as they are: the messages already quote most names with `{:?}`,
/// whose `\"` and `\\` must stay readable, and the aim is a harmless line, not a reversible
/// encoding.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape`] for multi-line text of rlayerfs's own (clap's usage errors): each line is
/// escaped, the line breaks are kept.
pub fn escape_lines(text: &str) -> String {
    text.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("a\x1b[31mb\nc\td\re\x7f"),
            "a\\x1b[31mb\\nc\\td\\re\\x7f"
        );
        assert_eq!(escape("\u{9b}x\u{202e}"), "\\u{9b}x\\u{202e}");
        assert_eq!(escape("plain \"é\" \\ ok"), "plain \"é\" \\ ok");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_lines("a\x1b\nb\n"), "a\\x1b\nb\n");
    }
}
