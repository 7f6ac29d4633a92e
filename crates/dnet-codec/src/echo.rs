//! Input-derived text in error messages, cut to a bounded length: a remote
//! caller controls every byte of what this crate reads, and an error message
//! goes into replies and logs, so it must not grow with the input.

/// The most bytes of input-derived text one error message repeats.
pub const MAX_ECHO_BYTES: usize = 120;

/// `text` as it goes into an error message: whole when at most
/// [`MAX_ECHO_BYTES`] long, otherwise its start (cut on a char boundary), "..."
/// and its full length.
#[must_use]
pub fn cut(text: &str) -> String {
    if text.len() <= MAX_ECHO_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_ECHO_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// `bytes` as text for an error message (invalid UTF-8 shown as U+FFFD),
/// cut as [`cut`] does, without first copying all of `bytes`.
#[must_use]
pub fn cut_bytes(bytes: &[u8]) -> String {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ECHO_BYTES)]);
    if bytes.len() <= MAX_ECHO_BYTES {
        return shown.into_owned();
    }
    // A character split at the cut shows as U+FFFD: the text is cut anyway.
    format!("{shown}... ({} bytes)", bytes.len())
}

/// The most items of a list (a shape, tensor names) an error message shows.
pub const MAX_LISTED: usize = 8;

/// A list (a shape, tensor names) as it goes into an error message: its
/// first [`MAX_LISTED`] items in `Debug` form, cut as [`cut`] does, and how
/// many there are when some are left out.
#[must_use]
pub fn list<T: std::fmt::Debug>(items: &[T]) -> String {
    let shown: Vec<String> = items
        .iter()
        .take(MAX_LISTED)
        .map(|item| cut(&format!("{item:?}")))
        .collect();
    let more = if items.len() > MAX_LISTED { ", ..." } else { "" };
    let listed = cut(&format!("[{}{more}]", shown.join(", ")));
    if items.len() > MAX_LISTED {
        format!("{listed} ({} in all)", items.len())
    } else {
        listed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_on_a_char_boundary() {
        assert_eq!(cut("os.system"), "os.system");
        let long = "é".repeat(1000);
        let shown = cut(&long);
        assert!(shown.len() <= MAX_ECHO_BYTES + 20, "{}", shown.len());
        assert!(shown.ends_with("... (2000 bytes)"), "{shown}");
        assert_eq!(cut_bytes(&[b'a'; 500]).len(), cut(&"a".repeat(500)).len());
        assert_eq!(list(&[1, 3, 32, 32]), "[1, 3, 32, 32]");
        let names: Vec<String> = (0..100_000).map(|i| format!("tensor{i}")).collect();
        let shown = list(&names);
        assert!(
            shown.len() <= MAX_ECHO_BYTES + 40 && shown.ends_with("(100000 in all)"),
            "{shown}"
        );
    }
}
