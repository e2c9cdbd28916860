//! Text from the cloud (tag values, error messages) is untrusted: before it
//! reaches a terminal, control characters, line and paragraph separators,
//! bidirectional controls and invisible format characters are shown as
//! escapes so they cannot move the cursor, recolour the screen, reorder what
//! the user reads or hide text in plain sight.

use std::borrow::Cow;

/// Returns `text` with every character [`needs_escape`] selects replaced by
/// a visible `\u{…}` escape (`\t`, `\n`, `\r` as themselves escaped).
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `c` must not reach a terminal as it is: a control character (C0,
/// DEL, C1: Unicode category Cc), a line or paragraph separator (Zl, Zp), or
/// a format character (Cf: bidirectional marks, embeddings, overrides and
/// isolates, zero-width characters, the byte order mark, tag characters and
/// the like). Everything that prints untrusted text uses this one predicate.
pub fn needs_escape(c: char) -> bool {
    c.is_control() || is_separator_or_format(c)
}

/// Unicode's Zl, Zp and Cf characters (as of Unicode 16.0; the Rust
/// standard library has no general-category lookup).
fn is_separator_or_format(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every character that must be escaped, listed independently of
    /// `needs_escape`: the C0 and C1 controls and DEL, the separators, and
    /// the bidirectional and invisible format characters.
    fn must_escape() -> Vec<char> {
        let ranges: [(u32, u32); 25] = [
            (0x00, 0x1f),       // C0 controls
            (0x7f, 0x7f),       // DEL
            (0x80, 0x9f),       // C1 controls
            (0xad, 0xad),       // soft hyphen
            (0x600, 0x605),     // Arabic number signs (prepended marks)
            (0x61c, 0x61c),     // Arabic letter mark
            (0x6dd, 0x6dd),     // Arabic end of ayah
            (0x70f, 0x70f),     // Syriac abbreviation mark
            (0x890, 0x891),     // Arabic pound and piastre marks above
            (0x8e2, 0x8e2),     // Arabic disputed end of ayah
            (0x180e, 0x180e),   // Mongolian vowel separator
            (0x200b, 0x200f),   // zero width space, (non-)joiner, LRM, RLM
            (0x2028, 0x2029),   // line and paragraph separators
            (0x202a, 0x202e),   // LRE, RLE, PDF, LRO, RLO
            (0x2060, 0x2064),   // word joiner, invisible operators
            (0x2066, 0x2069),   // LRI, RLI, FSI, PDI
            (0x206a, 0x206f),   // deprecated format characters
            (0xfeff, 0xfeff),   // zero width no-break space (BOM)
            (0xfff9, 0xfffb),   // interlinear annotation
            (0x110bd, 0x110bd), // Kaithi number sign
            (0x13430, 0x1343f), // Egyptian hieroglyph format controls
            (0x1bca0, 0x1bca3), // shorthand format controls
            (0x1d173, 0x1d17a), // musical symbol format controls
            (0xe0001, 0xe0001), // language tag
            (0xe0020, 0xe007f), // tag characters
        ];
        let mut all: Vec<char> = ranges
            .iter()
            .flat_map(|&(a, b)| (a..=b).filter_map(char::from_u32))
            .collect();
        all.push('\u{110cd}'); // Kaithi number sign above
        all
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(
            terminal_safe("web-1 (prod) ünïcode ウェブ 👍 \u{a0}"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn escapes_terminal_sequences_newlines_and_bidi() {
        assert_eq!(terminal_safe("a\x1b[31mred"), "a\\u{1b}[31mred");
        assert_eq!(terminal_safe("x\ny\rz\t"), "x\\ny\\rz\\t");
        assert_eq!(terminal_safe("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(terminal_safe("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(terminal_safe("del\x7f"), "del\\u{7f}");
    }

    #[test]
    fn escapes_separators_marks_and_invisible_characters() {
        assert_eq!(terminal_safe("a\u{61c}b"), "a\\u{61c}b");
        assert_eq!(terminal_safe("one\u{2028}two"), "one\\u{2028}two");
        assert_eq!(terminal_safe("one\u{2029}two"), "one\\u{2029}two");
        assert_eq!(terminal_safe("pr\u{200b}od"), "pr\\u{200b}od");
        assert_eq!(terminal_safe("\u{feff}web"), "\\u{feff}web");
        assert_eq!(terminal_safe("a\u{2066}b\u{2069}"), "a\\u{2066}b\\u{2069}");
        assert_eq!(terminal_safe("\u{180e}"), "\\u{180e}");
        assert_eq!(terminal_safe("x\u{e0041}"), "x\\u{e0041}");
    }

    #[test]
    fn every_control_separator_and_format_character_is_escaped() {
        for c in must_escape() {
            assert!(needs_escape(c), "U+{:04X} is not escaped", c as u32);
            let shown = terminal_safe(&c.to_string()).into_owned();
            let expected = match c {
                '\t' => "\\t".to_owned(),
                '\n' => "\\n".to_owned(),
                '\r' => "\\r".to_owned(),
                c => format!("\\u{{{:x}}}", c as u32),
            };
            assert_eq!(shown, expected, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn nothing_else_is_escaped() {
        let listed: std::collections::HashSet<char> = must_escape().into_iter().collect();
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            assert_eq!(
                needs_escape(c),
                listed.contains(&c),
                "U+{:04X} is escaped but not listed, or listed but not escaped",
                c as u32
            );
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Text mixing what must be escaped with anything else.
        fn hostile_text() -> impl Strategy<Value = String> {
            let listed = must_escape();
            let piece = prop_oneof![
                proptest::sample::select(listed).prop_map(String::from),
                any::<char>().prop_map(String::from),
                "[a-z0-9 .\\\\{}-]{0,8}",
            ];
            proptest::collection::vec(piece, 0..32).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Sanitised text holds no control, separator, bidi or
            /// invisible format character, and text that needed nothing is
            /// returned as it was.
            #[test]
            fn output_never_holds_a_character_to_escape(text in hostile_text()) {
                let listed = must_escape();
                let shown = terminal_safe(&text);
                prop_assert!(
                    !shown.chars().any(|c| listed.contains(&c)),
                    "{:?} -> {:?}", text, shown
                );
                if !text.chars().any(|c| listed.contains(&c)) {
                    prop_assert_eq!(shown.as_ref(), text.as_str());
                }
            }
        }
    }
}
