//! Plain-text tables for listings on a terminal: rows aligned under a
//! header by display width (names may be wide), one column optionally cut.

use unicode_width::UnicodeWidthStr;

/// Rows aligned under `header`; with `cut = Some((column, width))`, that
/// column's longer cells end in `…` at `width`. Cells must be terminal-safe.
pub fn render(header: &[&str], rows: &[Vec<String>], cut: Option<(usize, usize)>) -> String {
    let mut shown: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    shown.extend(rows.iter().map(|r| {
        let mut r = r.clone();
        if let Some((col, width)) = cut
            && let Some(cell) = r.get_mut(col)
        {
            *cell = truncate(cell, width);
        }
        r
    }));
    let mut widths = vec![0; header.len()];
    for r in &shown {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.width());
        }
    }
    let mut out = String::new();
    for r in &shown {
        let mut line = String::new();
        for (n, (cell, w)) in r.iter().zip(&widths).enumerate() {
            line.push_str(cell);
            if n + 1 < r.len() {
                line.push_str(&" ".repeat(w - cell.width() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `s` cut to `max` columns, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.width() <= max {
        return s.to_owned();
    }
    let mut out = String::new();
    for c in s.chars() {
        if out.width() + c.to_string().width() > max.saturating_sub(1) {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_cells_are_cut() {
        let long = "x".repeat(60);
        let cut = truncate(&long, 40);
        assert_eq!(cut.width(), 40);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", 40), "short");
        let text = render(&["A", "B"], &[vec![long, "b".into()]], Some((0, 10)));
        assert_eq!(
            text.lines().nth(1).map(|l| l.starts_with("xxxxxxxxx…  b")),
            Some(true),
            "{text}"
        );
    }
}
