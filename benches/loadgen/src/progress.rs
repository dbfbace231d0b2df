//! Progress bars: one for the whole matrix, one spinner for the phase of
//! the current run. When stderr is not a terminal indicatif draws
//! nothing, and the one-line summaries are printed plainly instead.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: MultiProgress,
    overall: ProgressBar,
    phase: ProgressBar,
}

impl Progress {
    pub fn new(runs: u64) -> Progress {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(runs));
        overall.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let phase = multi.add(ProgressBar::new_spinner());
        phase.set_style(
            ProgressStyle::with_template("  {spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        phase.enable_steady_tick(Duration::from_millis(120));
        Progress {
            multi,
            overall,
            phase,
        }
    }

    /// Names the run now starting.
    pub fn run(&self, name: &str) {
        self.overall.set_message(name.to_string());
    }

    /// Says what the current run is doing.
    pub fn phase(&self, what: &str) {
        self.phase.set_message(what.to_string());
    }

    /// Prints a line above the bars and counts one run done.
    pub fn finish_run(&self, summary: &str) {
        self.println(summary);
        self.overall.inc(1);
    }

    /// Prints a line above the bars (or plainly when they are hidden).
    pub fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    pub fn finish(&self) {
        self.phase.finish_and_clear();
        self.overall.finish_with_message("done");
    }
}
