//! The `.part` file a download streams into, hashed as it is written (constant memory), and how
//! a try ends badly (shared by the https:// and s3:// paths, which the loop in `fetch` retries).

use std::io::{BufWriter, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// How a try ended badly.
#[derive(Debug)]
pub(super) enum Failure {
    /// Worth another try (network, timeout, cut-off body, 5xx/429).
    Retry(String),
    /// Trying again would give the same answer.
    Fatal(String),
}

pub(super) struct Sink<'a> {
    part: &'a Path,
    out: BufWriter<std::fs::File>,
    hash: Sha256,
    pub(super) total: u64,
}

impl<'a> Sink<'a> {
    pub(super) fn create(part: &'a Path) -> Result<Sink<'a>, Failure> {
        let file = std::fs::File::create(part).map_err(|e| cannot_write(part, e))?;
        Ok(Sink {
            part,
            out: BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            total: 0,
        })
    }

    pub(super) fn write(&mut self, chunk: &[u8]) -> Result<(), Failure> {
        self.hash.update(chunk);
        self.out
            .write_all(chunk)
            .map_err(|e| cannot_write(self.part, e))?;
        self.total += chunk.len() as u64;
        Ok(())
    }

    /// The transfer stopped half-way: worth another try.
    pub(super) fn broke_off(&self, e: impl std::fmt::Display) -> Failure {
        Failure::Retry(format!(
            "transfer broke off after {} bytes: {e}",
            self.total
        ))
    }

    /// On disk, and as long as announced (when it was): (bytes, sha256).
    pub(super) fn finish(self, expected: Option<u64>) -> Result<(u64, [u8; 32]), Failure> {
        if let Some(len) = expected
            && len != self.total
        {
            return Err(Failure::Retry(format!(
                "truncated: {} of {len} bytes",
                self.total
            )));
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| cannot_write(self.part, e.into_error()))?;
        file.sync_all().map_err(|e| cannot_write(self.part, e))?;
        Ok((self.total, self.hash.finalize().into()))
    }
}

fn cannot_write(part: &Path, e: std::io::Error) -> Failure {
    Failure::Fatal(format!("cannot write {}: {e}", part.display()))
}
