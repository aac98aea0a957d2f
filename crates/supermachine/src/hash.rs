//! Content hashes used as cache keys.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

pub struct Hasher(Sha256);

impl Hasher {
    pub fn new(domain: &str) -> Self {
        let mut h = Sha256::new();
        h.update(domain.as_bytes());
        h.update([0]);
        Hasher(h)
    }

    /// Adds a length-prefixed field, so ("ab","c") and ("a","bc") differ.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn file(&mut self, path: &Path) -> std::io::Result<&mut Self> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        self.0.update(len.to_le_bytes());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.0.update(&buf[..n]);
        }
        Ok(self)
    }

    /// First 16 hex digits: short enough for paths, long enough not to collide.
    pub fn short(&self) -> String {
        hex::encode(&self.0.clone().finalize()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed() {
        let a = Hasher::new("t").field(b"ab").field(b"c").short();
        let b = Hasher::new("t").field(b"a").field(b"bc").short();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
