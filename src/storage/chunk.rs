//! A piece of an upload on its way into a store: a buffer the upload
//! pipeline fills, hashes and hands to the store, reused from one piece
//! to the next.
//!
//! Its bytes start at a multiple of [`DIRECT_IO_ALIGN`] in memory, so the
//! filesystem store can write a full chunk with `O_DIRECT` (which wants
//! the buffer, the length and the file offset aligned); the object store
//! sends it as a [`Bytes`] that shares it.

use std::sync::Arc;

use bytes::Bytes;

/// The alignment direct I/O needs: a page, which is also the largest
/// logical block size of common disks (4Kn). Chunk sizes are multiples.
pub const DIRECT_IO_ALIGN: usize = 4096;

/// A buffer of at most a fixed capacity whose content starts aligned to
/// [`DIRECT_IO_ALIGN`]. Safe code only: it over-allocates and starts at
/// the first aligned byte.
pub struct Chunk {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    capacity: usize,
}

impl Chunk {
    /// An empty chunk that holds `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Chunk {
        let buf = vec![0u8; capacity + DIRECT_IO_ALIGN];
        let misalignment = buf.as_ptr() as usize % DIRECT_IO_ALIGN;
        let start = (DIRECT_IO_ALIGN - misalignment) % DIRECT_IO_ALIGN;
        Chunk {
            buf,
            start,
            len: 0,
            capacity,
        }
    }

    /// Copies as much of `data` as fits; returns how much that was.
    pub fn fill(&mut self, data: &[u8]) -> usize {
        let take = data.len().min(self.capacity - self.len);
        let at = self.start + self.len;
        self.buf[at..at + take].copy_from_slice(&data[..take]);
        self.len += take;
        take
    }

    /// Whether it holds its capacity.
    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// Empties it, to be filled again.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// What it holds.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// A [`Bytes`] of its content that shares the chunk (no copy); the
    /// chunk is free again once every such `Bytes` is dropped.
    pub fn to_bytes(chunk: &Arc<Chunk>) -> Bytes {
        Bytes::from_owner(Shared(Arc::clone(chunk)))
    }
}

/// A shared chunk as the owner of a [`Bytes`].
struct Shared(Arc<Chunk>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_aligned_and_bounded() {
        for capacity in [0, 1, 4096, 512 << 10] {
            let mut chunk = Chunk::with_capacity(capacity);
            assert_eq!(chunk.as_slice().as_ptr() as usize % DIRECT_IO_ALIGN, 0);
            let data: Vec<u8> = (0..capacity + 10).map(|i| i as u8).collect();
            assert_eq!(chunk.fill(&data[..3.min(capacity)]), 3.min(capacity));
            let rest = chunk.fill(&data[3.min(capacity)..]);
            assert_eq!(rest, capacity - 3.min(capacity));
            assert!(chunk.is_full());
            assert_eq!(chunk.as_slice(), &data[..capacity]);
            assert_eq!(chunk.fill(b"more"), 0);
            let shared = Arc::new(chunk);
            let bytes = Chunk::to_bytes(&shared);
            assert_eq!(&bytes[..], &data[..capacity]);
            assert!(Arc::try_unwrap(shared.clone()).is_err());
            drop(bytes);
            let mut again = Arc::try_unwrap(shared)
                .ok()
                .expect("free once shared bytes are gone");
            again.clear();
            assert!(again.as_slice().is_empty());
        }
    }
}
