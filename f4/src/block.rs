//! Block files: a sealed data file cut into the stripes of its geometry
//! ([`encode_volume`]), and range reads that return only verified bytes
//! ([`read_block_range`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use coding::{BlockChecksums, Codec, StripeEncoder, VolumeSource};

use crate::error::{Error, Result};
use crate::format::{BLOCK_HEADER_SIZE, BlockHeader, Geometry};
use haystack::file::{FileStorage, Storage, sync_dir};

/// Bytes per block per encoding step: with RS(10,4), 14 MiB of columns, so
/// that each file write is large; memory stays at that whatever the volume.
pub const ENCODE_COLUMN_BYTES: usize = 1 << 20;

/// The start of the name of every file (block, index, journal, staging) of
/// `volume_id`'s encode generation `generation`: `volume-VID.gGEN`.
pub fn generation_prefix(volume_id: u32, generation: u64) -> String {
    format!("volume-{volume_id:010}.g{generation:016x}")
}

/// The encode generation of file `name` of `volume_id` (named after
/// [`generation_prefix`]); `None` for another volume's file or any other.
pub fn generation_of(name: &str, volume_id: u32) -> Option<u64> {
    let rest = name.strip_prefix(&format!("volume-{volume_id:010}.g"))?;
    u64::from_str_radix(rest.get(..16)?, 16).ok()
}

/// The file name of block `block_index` of `stripe` of `volume_id`, encode
/// generation `generation`.
pub fn block_file_name(volume_id: u32, generation: u64, stripe: u64, block_index: u32) -> String {
    format!(
        "{}.s{stripe:06}.b{block_index:02}.block",
        generation_prefix(volume_id, generation)
    )
}

/// One block file written by [`encode_volume`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenBlock {
    /// Its header.
    pub header: BlockHeader,
    /// Where it was written.
    pub path: PathBuf,
}

/// A sealed data file read at offsets.
struct FileSource {
    file: File,
    len: u64,
}

impl VolumeSource for FileSource {
    fn len_bytes(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// Cuts the sealed data file at `data_path` into the blocks of `geometry`,
/// `k` data and `m` parity per stripe, each written to `out_dir` as a block
/// file of encode generation `generation` (header, data, checksum record;
/// synced, then renamed into place). Returns every block, stripe by stripe.
pub fn encode_volume(
    data_path: &Path,
    volume_id: u32,
    generation: u64,
    geometry: Geometry,
    out_dir: &Path,
) -> Result<Vec<WrittenBlock>> {
    let layout = geometry.layout()?;
    let file = File::open(data_path)?;
    let len = file.metadata()?.len();
    if len != geometry.volume_len_bytes {
        return Err(Error::WrongBlock(format!(
            "{} is {len} bytes, the geometry says {}",
            data_path.display(),
            geometry.volume_len_bytes
        )));
    }
    let source = FileSource { file, len };
    let codec = Codec::new(geometry.rs_config()?)?;
    let mut encoder = StripeEncoder::new(&codec, ENCODE_COLUMN_BYTES, geometry.chunk_size_bytes)?;
    let mut written = Vec::new();
    // An empty volume still has one (empty) stripe, so that it has blocks.
    for stripe in 0..layout.stripe_count().max(1) {
        let headers: Vec<BlockHeader> = (0..geometry.blocks_per_stripe())
            .map(|index| BlockHeader::new(volume_id, generation, geometry, stripe, index))
            .collect::<Result<_>>()?;
        let paths: Vec<PathBuf> = headers
            .iter()
            .map(|h| {
                out_dir.join(block_file_name(
                    volume_id,
                    generation,
                    stripe,
                    h.block_index,
                ))
            })
            .collect();
        let temporary: Vec<PathBuf> = paths.iter().map(|p| p.with_extension("tmp")).collect();
        let result = write_stripe(&mut encoder, &layout, &source, &headers, &temporary);
        if let Err(error) = result {
            for path in &temporary {
                let _ = std::fs::remove_file(path);
            }
            return Err(error);
        }
        for ((tmp, path), header) in temporary.iter().zip(&paths).zip(headers) {
            std::fs::rename(tmp, path)?;
            written.push(WrittenBlock {
                header,
                path: path.clone(),
            });
        }
    }
    sync_dir(out_dir)?;
    Ok(written)
}

fn write_stripe(
    encoder: &mut StripeEncoder<'_>,
    layout: &coding::StripeLayout,
    source: &FileSource,
    headers: &[BlockHeader],
    paths: &[PathBuf],
) -> Result<()> {
    let mut sinks = Vec::with_capacity(paths.len());
    for (path, header) in paths.iter().zip(headers) {
        let mut sink = BufWriter::with_capacity(ENCODE_COLUMN_BYTES, File::create(path)?);
        sink.write_all(&header.encode())?;
        sinks.push(sink);
    }
    let checksums = if layout.stripe_count() == 0 {
        // An empty volume: empty blocks, empty checksum records.
        headers
            .iter()
            .map(|h| BlockChecksums::compute(h.geometry.chunk_size_bytes, &[]))
            .collect::<coding::Result<Vec<_>>>()?
    } else {
        encoder.encode_stripe(layout, source, headers[0].stripe, &mut sinks)?
    };
    for ((sink, checksums), header) in sinks.into_iter().zip(checksums).zip(headers) {
        header.check_checksums(&checksums)?;
        let mut sink = sink;
        sink.write_all(&checksums.encode())?;
        let file = sink.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
    }
    Ok(())
}

/// What a reader expects of a block: the directory's record of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedBlock {
    /// The volume.
    pub volume_id: u32,
    /// The committed encode generation.
    pub generation: u64,
    /// The volume's geometry.
    pub geometry: Geometry,
    /// The block's stripe.
    pub stripe: u64,
    /// Its index in the stripe.
    pub block_index: u32,
}

/// Reads `len` bytes at `offset` of the block file at `path`, after
/// checking that it is the block `expected` names (volume, generation,
/// geometry, place) and verifying every checksum chunk the range touches.
/// A mismatch is an error; no unverified byte is ever returned.
pub fn read_block_range(
    path: &Path,
    expected: &ExpectedBlock,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    BlockFile::open(path)?.read_range(expected, offset, len)
}

/// An open block file: its header and checksum record read and checked
/// once, so that many range reads cost one positioned read each.
#[derive(Debug)]
pub struct BlockFile {
    storage: FileStorage,
    header: BlockHeader,
    checksums: BlockChecksums,
}

impl BlockFile {
    /// Opens the block file at `path` and checks its header, its length and
    /// its checksum record against each other.
    pub fn open(path: &Path) -> Result<BlockFile> {
        let file = File::open(path)?;
        let header = read_header(&file)?;
        let checksums = read_checksums(&file, &header)?;
        Ok(BlockFile {
            storage: FileStorage::new(file),
            header,
            checksums,
        })
    }

    /// The block's header, as checked when it was opened.
    pub fn header(&self) -> &BlockHeader {
        &self.header
    }

    /// Reads `len` bytes at `offset` of the block's data, after checking
    /// that it is the block `expected` names and verifying every checksum
    /// chunk the range touches.
    pub fn read_range(&self, expected: &ExpectedBlock, offset: u64, len: u64) -> Result<Bytes> {
        self.read_with(expected, offset, len, |len, at| {
            Ok(Some(self.storage.read_vec_at(len, at)?))
        })
        .map(|bytes| bytes.expect("a blocking read always reads"))
    }

    /// [`BlockFile::read_range`] if every byte it needs is in the page
    /// cache (`preadv2(RWF_NOWAIT)`, never waiting for the disk), else
    /// `None`: for a caller on an async task.
    pub fn try_read_range_cached(
        &self,
        expected: &ExpectedBlock,
        offset: u64,
        len: u64,
    ) -> Result<Option<Bytes>> {
        self.read_with(expected, offset, len, |len, at| {
            Ok(self.storage.try_read_vec_cached(len, at)?)
        })
    }

    /// The checks of a range read around `read`, which reads the covering
    /// chunks (`len` bytes at file offset `at`), or gives up with `None`.
    fn read_with(
        &self,
        expected: &ExpectedBlock,
        offset: u64,
        len: u64,
        read: impl FnOnce(usize, u64) -> Result<Option<Vec<u8>>>,
    ) -> Result<Option<Bytes>> {
        let header = &self.header;
        let wanted = BlockHeader::new(
            expected.volume_id,
            expected.generation,
            expected.geometry,
            expected.stripe,
            expected.block_index,
        )?;
        if *header != wanted {
            return Err(Error::WrongBlock(format!(
                "the block holds {header:?}, expected {wanted:?}"
            )));
        }
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > header.block_len_bytes) {
            return Err(Error::OutOfRange {
                what: "block",
                offset,
                len,
                limit: header.block_len_bytes,
            });
        }
        let (start, covered) = self.checksums.covering_range(offset, len)?;
        let covered = usize::try_from(covered).map_err(|_| Error::OutOfRange {
            what: "memory",
            offset,
            len,
            limit: usize::MAX as u64,
        })?;
        let Some(bytes) = read(covered, BLOCK_HEADER_SIZE as u64 + start)? else {
            return Ok(None);
        };
        self.checksums.verify_range(start, &bytes)?;
        let from = usize::try_from(offset - start).expect("within one covered range");
        let to = from + usize::try_from(len).expect("within one covered range");
        // A slice, not a copy: the covered range can be twice the wanted one.
        Ok(Some(Bytes::from(bytes).slice(from..to)))
    }
}

/// The header of a block file, checked.
pub fn read_header(file: &File) -> Result<BlockHeader> {
    let mut bytes = [0u8; BLOCK_HEADER_SIZE];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                Error::corrupt("block file is shorter than its header")
            }
            _ => Error::Io(e),
        })?;
    BlockHeader::decode(&bytes)
}

/// The checksum record after the block's data, checked against its header.
fn read_checksums(file: &File, header: &BlockHeader) -> Result<BlockChecksums> {
    let at = BLOCK_HEADER_SIZE as u64 + header.block_len_bytes;
    let file_len = file.metadata()?.len();
    if Some(file_len) != header.file_len_bytes() {
        return Err(Error::corrupt(format!(
            "block file is {file_len} bytes, its header says {:?}",
            header.file_len_bytes()
        )));
    }
    let mut bytes =
        vec![0u8; usize::try_from(file_len - at).expect("a checksum record fits memory")];
    file.read_exact_at(&mut bytes, at)?;
    let checksums = BlockChecksums::decode(&bytes)?;
    header.check_checksums(&checksums)?;
    Ok(checksums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_of_reads_back_every_file_name_of_a_generation() {
        let generation = 0x1_0000_0002;
        for name in [
            block_file_name(7, generation, 3, 12),
            format!("{}.index", generation_prefix(7, generation)),
            generation_prefix(7, generation),
        ] {
            assert_eq!(generation_of(&name, 7), Some(generation), "{name}");
            assert_eq!(generation_of(&name, 70), None, "{name}");
        }
        assert_eq!(generation_of("volume-0000000007.gxyz", 7), None);
    }
}
