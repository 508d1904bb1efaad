//! Progress bars for the long phases, on stderr, only for a person
//! watching.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws progress bars, or hidden ones when disabled or when stderr is not
/// a terminal.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    shown: bool,
}

impl Progress {
    /// Bars shown if `enabled` and stderr is a terminal.
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            shown: enabled && std::io::stderr().is_terminal(),
        }
    }

    /// A bar counting up to `len`, labelled `what`.
    pub(crate) fn bar(self, len: u64, what: &'static str) -> ProgressBar {
        if !self.shown {
            return ProgressBar::hidden();
        }
        let style = ProgressStyle::with_template(
            "{msg:>12} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_message(what);
        bar.tick();
        bar
    }
}
