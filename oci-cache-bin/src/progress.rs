//! What a long command shows while it works: on a terminal a progress bar
//! per image plus an overall byte count (indicatif, on stderr); otherwise
//! nothing but the result lines, one per image, on stdout, so logs and
//! scripts get plain text.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Result lines and, on a terminal, the bars.
#[derive(Debug)]
pub(crate) struct Reporter {
    bars: Option<(MultiProgress, ProgressBar)>,
}

impl Reporter {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub(crate) fn new(label: &str) -> Reporter {
        if !std::io::stderr().is_terminal() {
            return Reporter { bars: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(style(
            "{prefix:.bold} {bytes}/{total_bytes} {binary_bytes_per_sec} [{elapsed_precise}] {msg}",
        ));
        overall.set_prefix(label.to_owned());
        overall.enable_steady_tick(Duration::from_millis(200));
        Reporter {
            bars: Some((multi, overall)),
        }
    }

    /// A bar for one image (hidden when not on a terminal).
    pub(crate) fn image(&self, name: &str) -> ImageBar {
        let Some((multi, overall)) = &self.bars else {
            return ImageBar {
                bar: None,
                overall: None,
            };
        };
        let bar = multi.insert_before(overall, ProgressBar::new(0));
        bar.set_style(style(
            "{wide_msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
        ));
        bar.set_message(name.to_owned());
        ImageBar {
            bar: Some(bar),
            overall: Some(overall.clone()),
        }
    }

    /// A result line: above the bars on a terminal, on stdout otherwise.
    pub(crate) fn line(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => {
                let _ = writeln!(std::io::stdout(), "{text}");
            }
        }
    }

    /// Removes the bars.
    pub(crate) fn finish(&self) {
        if let Some((multi, overall)) = &self.bars {
            overall.finish_and_clear();
            let _ = multi.clear();
        }
    }
}

/// One image's bar and its share of the overall one.
#[derive(Debug, Clone)]
pub(crate) struct ImageBar {
    bar: Option<ProgressBar>,
    overall: Option<ProgressBar>,
}

impl ImageBar {
    /// The image turned out to be `bytes` large.
    pub(crate) fn set_total(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(bytes);
        }
        if let Some(overall) = &self.overall {
            overall.inc_length(bytes);
        }
    }

    /// `bytes` more are done.
    pub(crate) fn inc(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
        if let Some(overall) = &self.overall {
            overall.inc(bytes);
        }
    }

    /// The image is done (or failed): its bar goes away.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
