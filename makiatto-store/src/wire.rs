//! Replication messages and their framing (replication.md §3.7).
//!
//! A frame is a big-endian `u32` length followed by a postcard-encoded [`Frame`]. The first
//! byte of the payload is the protocol version. Frames above the configured limit are
//! refused before any allocation.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::known::Known;
use crate::{Result, SiteId, StoreError, Value};

/// The replication protocol version.
pub const PROTOCOL: u8 = 2;

/// Default upper bound on one frame's payload.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// One replicated cell: a column value of a row, or the row's sentinel (`cid == "-1"`,
/// `cv == cl`, `val == Null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Table name.
    pub table: Arc<str>,
    /// Packed primary key ([`crate::pack`]), shared by the cells of a row.
    pub pk: Arc<[u8]>,
    /// Column name, or `"-1"` for the sentinel.
    pub cid: Arc<str>,
    /// The value (Null for sentinels).
    pub val: Value,
    /// Column version (for the sentinel: the causal length).
    pub cv: i64,
    /// The row's causal length when this cell was current (odd: alive, even: deleted).
    pub cl: i64,
    /// Order within the origin transaction.
    pub seq: u32,
}

impl Cell {
    /// Whether this is a row sentinel.
    pub fn is_sentinel(&self) -> bool {
        &*self.cid == crate::table::SENTINEL
    }

    pub(crate) fn encoded_len(&self) -> usize {
        self.table.len() + self.pk.len() + self.cid.len() + self.val.encoded_len() + 24
    }
}

/// The surviving cells of one origin version (a local transaction), whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The origin replica.
    pub site: SiteId,
    /// The origin's version counter (dense per site, from 1).
    pub ver: u64,
    /// The origin transaction's HLC timestamp.
    pub ts: u64,
    /// Cells in seq order.
    pub cells: Vec<Cell>,
}

/// A broadcast unit: part of an origin version. The seq ranges of one version's chunks
/// tile `0..=last_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Origin replica.
    pub site: SiteId,
    /// Origin version.
    pub ver: u64,
    /// Origin timestamp.
    pub ts: u64,
    /// First seq covered by this chunk.
    pub seq_lo: u32,
    /// Last seq covered by this chunk.
    pub seq_hi: u32,
    /// The version's last seq.
    pub last_seq: u32,
    /// Remaining relay hops.
    pub hops: u8,
    /// The cells with seq in `seq_lo..=seq_hi`.
    pub cells: Vec<Cell>,
}

impl Chunk {
    /// Whether this chunk alone carries the whole version.
    pub fn is_complete(&self) -> bool {
        self.seq_lo == 0 && self.seq_hi >= self.last_seq
    }
}

impl Change {
    /// Cuts the version into chunks of at most about `max_bytes` of cells each.
    pub fn to_chunks(&self, max_bytes: usize, hops: u8) -> Vec<Chunk> {
        let last_seq = self.cells.iter().map(|c| c.seq).max().unwrap_or(0);
        let mut chunks = Vec::new();
        let mut cur: Vec<Cell> = Vec::new();
        let mut size = 0;
        let mut lo = 0u32;
        for cell in &self.cells {
            let len = cell.encoded_len();
            if !cur.is_empty() && size + len > max_bytes {
                let hi = cell.seq.saturating_sub(1).max(lo);
                chunks.push(self.chunk(lo, hi, last_seq, hops, std::mem::take(&mut cur)));
                lo = hi + 1;
                size = 0;
            }
            size += len;
            cur.push(cell.clone());
        }
        chunks.push(self.chunk(lo, last_seq, last_seq, hops, cur));
        chunks
    }

    fn chunk(&self, seq_lo: u32, seq_hi: u32, last_seq: u32, hops: u8, cells: Vec<Cell>) -> Chunk {
        Chunk {
            site: self.site,
            ver: self.ver,
            ts: self.ts,
            seq_lo,
            seq_hi,
            last_seq,
            hops,
            cells,
        }
    }
}

/// A sync request: everything the requester already has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncReq {
    /// The requester's known versions.
    pub known: Known,
    /// How many bytes of versions the responder may send in this session.
    pub byte_budget: u64,
    /// Known versions whose copy may still miss cells (see [`Pending`]).
    pub pending: Vec<Pending>,
}

/// Versions a replica holds that may lack cells: they came from a replica that had already
/// superseded some of their cells (a sync answer carries only surviving cells), and what
/// superseded them has not all arrived yet. Anything missing was superseded by a version
/// in `deps`; once every version of `deps` is held completely the versions are complete
/// (docs/replication.md, "Pending versions").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The versions.
    pub versions: Known,
    /// The versions that may hold what is missing from them.
    pub deps: Known,
}

/// Everything that travels on a replication connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame in each direction.
    Hello {
        /// Cluster id; a mismatch closes the connection.
        cluster_id: String,
        /// The sender's site.
        site: SiteId,
        /// The sender's schema version.
        schema_version: u32,
    },
    /// Push of (part of) a new version.
    Chunk(Chunk),
    /// Pull request.
    SyncReq(SyncReq),
    /// First frame of a sync answer: what the responder holds, and which of it may lack
    /// cells.
    SyncStart {
        /// The responder's known set.
        responder_known: Known,
        /// The responder's pending versions.
        responder_pending: Vec<Pending>,
    },
    /// Sync answer: one part of one origin version's surviving cells.
    Version {
        /// Origin replica.
        site: SiteId,
        /// Origin version.
        ver: u64,
        /// Origin timestamp.
        ts: u64,
        /// Part number, from 0.
        part: u32,
        /// Whether this is the version's last part.
        last_part: bool,
        /// Cells.
        cells: Vec<Cell>,
    },
    /// Versions the responder knows that have no surviving cell.
    Cleared {
        /// Origin replica.
        site: SiteId,
        /// Ranges of versions.
        ranges: Vec<(u64, u64)>,
    },
    /// End of a sync answer.
    SyncDone {
        /// False when the byte budget cut the answer short.
        complete: bool,
        /// The responder's known set (for the GC frontier).
        responder_known: Known,
    },
    /// The responder is at its session limit.
    Busy,
}

/// Encodes a frame's payload (without the length prefix).
pub fn encode(frame: &Frame) -> Result<Vec<u8>> {
    postcard::to_extend(frame, vec![PROTOCOL]).map_err(|e| StoreError::Malformed(e.to_string()))
}

/// Decodes a frame's payload. Never panics on hostile input.
pub fn decode(bytes: &[u8]) -> Result<Frame> {
    let (&proto, body) = bytes
        .split_first()
        .ok_or_else(|| StoreError::Malformed("empty frame".into()))?;
    if proto != PROTOCOL {
        return Err(StoreError::ProtocolMismatch {
            ours: PROTOCOL,
            theirs: proto,
        });
    }
    postcard::from_bytes(body).map_err(|e| StoreError::Malformed(e.to_string()))
}

/// Writes one length-prefixed frame.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let payload = encode(frame)?;
    let len = u32::try_from(payload.len()).map_err(|_| StoreError::FrameTooLarge {
        size: payload.len(),
        limit: u32::MAX as usize,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&payload).await?;
    Ok(())
}

/// Reads one length-prefixed frame, refusing frames above `max` bytes. Returns `None` at a
/// clean end of stream; a stream cut inside a frame is [`StoreError::Truncated`].
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Frame>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(StoreError::FrameTooLarge {
            size: len,
            limit: max,
        });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StoreError::Truncated
        } else {
            e.into()
        }
    })?;
    decode(&buf).map(Some)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cell(seq: u32, bytes: usize) -> Cell {
        Cell {
            table: "t".into(),
            pk: vec![1].into(),
            cid: "x".into(),
            val: Value::Blob(vec![0; bytes]),
            cv: 1,
            cl: 1,
            seq,
        }
    }

    #[test]
    fn chunks_tile_the_seq_range() {
        let change = Change {
            site: SiteId([1; 16]),
            ver: 1,
            ts: 5,
            cells: (0..10).map(|s| cell(s * 2, 100)).collect(),
        };
        let chunks = change.to_chunks(300, 4);
        assert!(chunks.len() > 1);
        assert_eq!(chunks[0].seq_lo, 0);
        for w in chunks.windows(2) {
            assert_eq!(w[0].seq_hi + 1, w[1].seq_lo);
        }
        assert_eq!(chunks.last().unwrap().seq_hi, 18);
        let total: usize = chunks.iter().map(|c| c.cells.len()).sum();
        assert_eq!(total, 10);
        for c in &chunks {
            assert!(
                c.cells
                    .iter()
                    .all(|x| x.seq >= c.seq_lo && x.seq <= c.seq_hi)
            );
        }
        assert!(change.to_chunks(1 << 20, 4)[0].is_complete());
    }

    #[test]
    fn frames_roundtrip_and_reject_other_protocols() {
        let f = Frame::Busy;
        let mut bytes = encode(&f).unwrap();
        assert_eq!(decode(&bytes).unwrap(), f);
        bytes[0] = 99;
        assert!(matches!(
            decode(&bytes),
            Err(StoreError::ProtocolMismatch { theirs: 99, .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let mut big = Vec::new();
        big.extend_from_slice(&(1u32 << 30).to_be_bytes());
        let r = read_frame(&mut big.as_slice(), 1024).await;
        assert!(matches!(r, Err(StoreError::FrameTooLarge { .. })));
        let mut cut = Vec::new();
        cut.extend_from_slice(&100u32.to_be_bytes());
        cut.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            read_frame(&mut cut.as_slice(), 1024).await,
            Err(StoreError::Truncated)
        ));
        assert!(
            read_frame(&mut [].as_slice(), 1024)
                .await
                .unwrap()
                .is_none()
        );
    }
}
