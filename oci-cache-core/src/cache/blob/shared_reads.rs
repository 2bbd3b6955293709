//! Blocks of a fill's file (storage's staging file or the spool) that one
//! of its clients read, kept a little while for the others.
//!
//! Clients that fell behind a fill's window read the same bytes of the
//! same file, and usually close together: pulls of one image started at
//! once move at about the same pace, and the fill runs far ahead of them.
//! Each of them reading on its own costs a system call, a zeroed buffer and
//! a copy out of the page cache per chunk per client. So a client reads the
//! whole aligned [`BLOCK`] that holds its position, and the last [`KEPT`]
//! blocks read stay shared: a client that finds its block there takes a
//! slice of it, with no system call and no copy.
//!
//! Memory stays bounded: at most [`KEPT`] blocks per fill (1 MiB), freed with
//! the fill's last reader.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

use super::buffer::lock;

/// Size and alignment of the blocks read from the file (the filesystem
/// backend's chunk size, so a read is one system call).
pub(super) const BLOCK: u64 = 128 * 1024;

/// Blocks kept per fill.
const KEPT: usize = 8;

/// The blocks lately read, oldest first.
#[derive(Default)]
pub(super) struct SharedReads {
    blocks: Mutex<VecDeque<(u64, Bytes)>>,
}

impl SharedReads {
    /// The start of the block holding `pos`.
    pub(super) fn block_of(pos: u64) -> u64 {
        pos - pos % BLOCK
    }

    /// A kept block that holds the byte at `pos`: its start and its bytes.
    pub(super) fn get(&self, pos: u64) -> Option<(u64, Bytes)> {
        let start = Self::block_of(pos);
        lock(&self.blocks)
            .iter()
            .find(|(at, bytes)| *at == start && at + bytes.len() as u64 > pos)
            .map(|(at, bytes)| (*at, bytes.clone()))
    }

    /// Keeps `bytes`, read at the block start `start`, for the other
    /// clients (in place of a shorter read of the same block: the end of a
    /// file still being written), forgetting the oldest beyond [`KEPT`].
    pub(super) fn keep(&self, start: u64, bytes: Bytes) {
        let mut blocks = lock(&self.blocks);
        if let Some(kept) = blocks.iter_mut().find(|(at, _)| *at == start) {
            if kept.1.len() < bytes.len() {
                kept.1 = bytes;
            }
            return;
        }
        if blocks.len() == KEPT {
            blocks.pop_front();
        }
        blocks.push_back((start, bytes));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_block_holding_a_position_and_forgets_the_oldest() {
        let shared = SharedReads::default();
        let block = |fill: u8, len: u64| Bytes::from(vec![fill; usize::try_from(len).unwrap()]);
        shared.keep(0, block(1, BLOCK));
        assert_eq!(shared.get(5).unwrap().0, 0);
        assert_eq!(shared.get(BLOCK - 1).unwrap().1[0], 1);
        assert!(shared.get(BLOCK).is_none());
        // A short read (the end of what was written) holds only what it read;
        // a longer read of the same block replaces it, a shorter one does not.
        shared.keep(BLOCK, block(2, 10));
        assert!(shared.get(BLOCK + 10).is_none());
        shared.keep(BLOCK, block(3, 100));
        shared.keep(BLOCK, block(4, 50));
        assert_eq!(shared.get(BLOCK + 10).unwrap().1.len(), 100);
        for i in 2..=KEPT as u64 {
            shared.keep(i * BLOCK, block(5, BLOCK));
        }
        assert!(shared.get(0).is_none(), "the oldest block is forgotten");
        assert!(shared.get(KEPT as u64 * BLOCK).is_some());
    }
}
