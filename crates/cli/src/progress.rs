//! Showing pull and root filesystem build progress on stderr: one bar per
//! blob being downloaded and per layer being applied on a terminal, plain
//! lines otherwise (logs, CI). Nothing is shown for work that is not done:
//! a cached image prints nothing.

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use supermachine::oci::{BlobKind, Digest, PullEvent};
use supermachine::{ImageEvent, ImageProgressFn};

/// A progress display for one image.
pub fn reporter() -> ImageProgressFn {
    let display = Mutex::new(Display::new(std::io::stderr().is_terminal()));
    Arc::new(move |event| {
        if let Ok(mut d) = display.lock() {
            d.event(event);
        }
    })
}

struct Display {
    /// `None`: plain lines.
    bars: Option<MultiProgress>,
    active: HashMap<Digest, ProgressBar>,
    layers: usize,
}

impl Display {
    fn new(terminal: bool) -> Display {
        Display {
            bars: terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            active: HashMap::new(),
            layers: 0,
        }
    }

    fn bar(&mut self, key: Digest, label: String, size: u64) {
        let Some(multi) = &self.bars else { return };
        let bar = multi.add(ProgressBar::new(size));
        let style = ProgressStyle::with_template(
            "{prefix:<30} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label);
        self.active.insert(key, bar);
    }

    fn finish(&mut self, key: &Digest, message: &'static str) {
        if let Some(bar) = self.active.remove(key) {
            bar.finish_with_message(message);
        }
    }

    fn line(&self, text: String) {
        match &self.bars {
            Some(multi) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn event(&mut self, event: &ImageEvent) {
        match event {
            ImageEvent::Pull(PullEvent::EndpointFailed { endpoint, error }) => self.line(format!(
                "{endpoint} failed, trying the next endpoint: {error}"
            )),
            ImageEvent::Pull(PullEvent::Resolved { layers, .. }) => self.layers = layers.len(),
            ImageEvent::Pull(PullEvent::BlobStarted { digest, kind, size }) => {
                let what = match kind {
                    BlobKind::Config => "config",
                    BlobKind::Layer => "layer",
                };
                let label = format!("pull {what} {}", digest.short());
                if self.bars.is_some() {
                    self.bar(digest.clone(), label, *size);
                } else {
                    self.line(format!("{label} ({})", HumanBytes(*size)));
                }
            }
            ImageEvent::Pull(PullEvent::BlobProgress { digest, done, .. }) => {
                if let Some(bar) = self.active.get(digest) {
                    bar.set_position(*done);
                }
            }
            ImageEvent::Pull(PullEvent::BlobDone {
                digest, fetched, ..
            }) => {
                if self.bars.is_none() && *fetched {
                    self.line(format!("pulled {}", digest.short()));
                }
                self.finish(digest, "done");
            }
            ImageEvent::BuildStarted { layers, .. } => {
                self.layers = *layers;
                if self.bars.is_none() {
                    self.line(format!("building the root filesystem ({layers} layers)"));
                }
            }
            ImageEvent::LayerProgress {
                index,
                digest,
                done,
                size,
            } => {
                if let Some(bar) = self.active.get(digest) {
                    bar.set_position(*done);
                } else if *done == 0 {
                    let label = format!(
                        "apply layer {}/{} {}",
                        index + 1,
                        self.layers,
                        digest.short()
                    );
                    if self.bars.is_some() {
                        self.bar(digest.clone(), label, *size);
                    } else {
                        self.line(label);
                    }
                }
            }
            ImageEvent::LayerApplied { digest, .. } => self.finish(digest, "applied"),
            ImageEvent::RootfsBuilt {
                path,
                bytes,
                inodes,
            } => self.line(format!(
                "root filesystem {} ({}, {inodes} inodes)",
                path.display(),
                HumanBytes(*bytes)
            )),
            _ => {}
        }
    }
}
