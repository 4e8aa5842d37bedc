//! The bound on the temporary bytes one squash writes.
//!
//! Every file a squash writes into its spool directory (archive members,
//! decompressed layers, the headers of kept layers) goes through a
//! [`Metered`] writer sharing one [`Budget`]: a write that would take the
//! total past the limit fails at once with [`OverLimit`], before anything
//! of it reaches the disk, so a layer that decompresses to far more than
//! its blob (a gzip bomb) stops the squash instead of filling `$TMPDIR`.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The default limit: 20 GiB. See the README's squash section.
pub const DEFAULT_TEMP_LIMIT: u64 = 20 << 30;

/// The temporary bytes a squash may write and those it has written.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Invariant: never above `limit`.
    written: Arc<AtomicU64>,
    limit: u64,
}

/// A write refused because it would cross the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{written} bytes of temporary files written, the limit is {limit}")]
pub struct OverLimit {
    /// Bytes written before the refused write.
    pub written: u64,
    /// The limit.
    pub limit: u64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Budget {
        Budget {
            written: Arc::new(AtomicU64::new(0)),
            limit,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// `inner`, counted against this budget.
    pub fn meter<W: Write>(&self, inner: W) -> Metered<W> {
        Metered {
            inner,
            budget: self.clone(),
        }
    }

    /// Takes `n` bytes, or refuses them all.
    fn take(&self, n: u64) -> Result<(), OverLimit> {
        self.written
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |written| {
                written.checked_add(n).filter(|total| *total <= self.limit)
            })
            .map(|_| ())
            .map_err(|written| OverLimit {
                written,
                limit: self.limit,
            })
    }
}

/// The [`OverLimit`] inside an I/O error, if that is what it is.
pub fn over_limit(error: &io::Error) -> Option<OverLimit> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<OverLimit>())
        .copied()
}

/// A writer whose bytes count against a [`Budget`].
#[derive(Debug)]
pub struct Metered<W> {
    inner: W,
    budget: Budget,
}

impl<W: Write> Write for Metered<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.budget
            .take(data.len() as u64)
            .map_err(io::Error::other)?;
        let n = self.inner.write(data)?;
        // What the inner writer did not take is not on the disk.
        if n < data.len() {
            self.budget
                .written
                .fetch_sub((data.len() - n) as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes writes through and counts them: the position in what is
/// written.
#[derive(Debug)]
pub struct Positioned<W> {
    inner: W,
    position: u64,
}

impl<W: Write> Positioned<W> {
    pub fn new(inner: W) -> Positioned<W> {
        Positioned { inner, position: 0 }
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Positioned<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.position += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A byte count for people: `512 bytes`, `3.2 MiB`, `20.0 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_past_the_limit_is_refused_whole_and_not_counted() {
        let budget = Budget::new(10);
        let mut out = budget.meter(Vec::new());
        out.write_all(b"12345678").unwrap();
        let err = out.write_all(b"abc").unwrap_err();
        assert_eq!(
            over_limit(&err),
            Some(OverLimit {
                written: 8,
                limit: 10
            })
        );
        assert_eq!(budget.written(), 8);
        out.write_all(b"ab").unwrap();
        assert_eq!(budget.written(), 10);
        assert_eq!(human(10), "10 bytes");
        assert_eq!(human(20 << 30), "20.0 GiB");
        assert_eq!(human(3 << 19), "1.5 MiB");
    }
}
