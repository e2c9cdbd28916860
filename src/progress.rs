//! A one-line status on standard error: rewritten in place on a terminal,
//! printed once (then only the final word) when stderr is a file or pipe,
//! so logs stay readable and CI output is not flooded.

use std::io::{IsTerminal, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A terminal: the line is redrawn in place.
    Live,
    /// A file or pipe: the first status and the final line only.
    Plain,
    /// Nothing at all.
    Silent,
}

pub struct Line {
    mode: Mode,
    /// Something is on the status line (terminal) or was announced (pipe).
    shown: bool,
}

impl Line {
    pub fn stderr() -> Line {
        let mode = if std::io::stderr().is_terminal() {
            Mode::Live
        } else {
            Mode::Plain
        };
        Line { mode, shown: false }
    }

    /// A status line that shows nothing (the caller reports otherwise).
    pub fn silent() -> Line {
        Line {
            mode: Mode::Silent,
            shown: false,
        }
    }

    /// Shows `text` as the current status.
    pub fn show(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        match self.mode {
            Mode::Live => {
                let _ = write!(err, "\r\x1b[2Keic-connect: {text}");
                let _ = err.flush();
            }
            Mode::Plain if !self.shown => {
                let _ = writeln!(err, "eic-connect: {text}");
            }
            Mode::Plain | Mode::Silent => return,
        }
        self.shown = true;
    }

    /// Removes the status from a terminal (before other output is written).
    pub fn clear(&mut self) {
        if self.mode == Mode::Live && self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }

    /// Replaces the status with a final line that stays.
    pub fn finish(&mut self, text: &str) {
        self.clear();
        if self.mode != Mode::Silent {
            let _ = writeln!(std::io::stderr().lock(), "eic-connect: {text}");
        }
        self.shown = false;
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.clear();
    }
}
