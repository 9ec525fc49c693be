//! The records of a `.zip` export, written front to back for a stream that cannot seek
//! (an HTTP body): each member's local header, its content, then (for files) a data
//! descriptor with the CRC-32 and sizes, and at the end the central directory.
//!
//! [`ZipEncoder`] only encodes: it returns the bytes of each record and counts every byte
//! that goes out (content included), so offsets are right without seeking;
//! `export.rs` walks the tree and writes. Memory: one central-directory record per member
//! (about 60 bytes plus the name) is kept until the end, never a file's content.
//!
//! Records are written here rather than with a crate: the `zip` crate's writers need a
//! blocking `Write` (its streaming mode included), while content arrives asynchronously
//! blob by blob — the reason `export.rs` writes tar headers itself. `async_zip` does stream
//! over an async writer with data descriptors, but it is pre-1.0 (0.0.x, with a separately
//! maintained fork), works on futures-io writers (an adapter over tokio's) and would add
//! its own CRC and I/O crates, for what is here a few hundred lines that the unit tests
//! below pin byte by byte: stored members, data descriptors, ZIP64 fields, two extra fields.
//!
//! - Members are *stored* (method 0), not compressed: cheap and streamable, though the
//!   archive is then as large as the content.
//! - Names are UTF-8 with general-purpose flag bit 11; a name that is not UTF-8 is written
//!   lossily (an invalid byte becomes U+FFFD).
//! - Unix modes (type and permission bits, so `S_IFLNK` for symlinks) go into the external
//!   attributes, as Info-ZIP does; a symlink's content is its target.
//! - The modification time goes into the DOS fields, in UTC and to 2 seconds (clamped to
//!   1980–2107), and exactly to the second into the extended-timestamp extra field
//!   (0x5455), which unzip, bsdtar and 7-Zip prefer; it is left out for a time outside
//!   the signed 32-bit range.
//! - ZIP64 fields appear only where a size or offset reaches 0xFFFFFFFF, or the member
//!   count 0xFFFF.

use crc::{CRC_32_ISO_HDLC, Crc, Digest, Table};

/// The CRC-32 of zip members (ISO-HDLC, as zlib's `crc32`).
static CRC32: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISO_HDLC);

// Signatures and field values of the format (APPNOTE.TXT 6.3.10); do not modify.
const LOCAL_HEADER: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const ZIP64_END: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const END: u32 = 0x0605_4b50;
const FLAG_DATA_DESCRIPTOR: u16 = 1 << 3;
const FLAG_UTF8: u16 = 1 << 11;
const VERSION_PLAIN: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// "Version made by": Unix (3) in the high byte, so readers take the mode from the
/// external attributes.
const MADE_BY_UNIX: u16 = 3 << 8;
const EXTRA_ZIP64: u16 = 0x0001;
const EXTRA_TIMESTAMP: u16 = 0x5455;
/// The extended timestamp's flag: a modification time follows.
const TIMESTAMP_MTIME: u8 = 1;
/// A 32-bit size or offset field at this value or above moves to the ZIP64 extra field.
const MAX_32: u64 = 0xFFFF_FFFF;
/// A 16-bit member count at this value or above moves to the ZIP64 end record.
const MAX_16: u64 = 0xFFFF;
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;
/// The MS-DOS directory attribute, in the low byte of the external attributes.
const DOS_DIRECTORY: u32 = 0x10;

/// A name too long for the 16-bit length field of a zip record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NameTooLong;

/// What a member is, for its mode bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MemberKind {
    File,
    Dir,
    Symlink,
}

/// Encodes a zip archive front to back; see the module doc.
#[derive(Default)]
pub(super) struct ZipEncoder {
    /// Bytes emitted so far: where the next record starts.
    offset: u64,
    /// The central directory's records, written by [`Self::finish`].
    central: Vec<u8>,
    entries: u64,
    /// The file whose content is being streamed.
    open: Option<OpenFile>,
}

struct OpenFile {
    member: Member,
    digest: Digest<'static, u32, Table<16>>,
}

/// One member's fields, as its central record needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// The UTF-8 name (`/`-terminated for a directory).
    name: Vec<u8>,
    /// Full Unix mode: type and permission bits.
    mode: u32,
    mtime_secs: i64,
    /// Where its local header starts.
    offset: u64,
    flags: u16,
    crc: u32,
    size: u64,
}

impl ZipEncoder {
    /// A directory member `name/`; returns its local header.
    pub(super) fn directory(
        &mut self,
        name: &[u8],
        mode: u32,
        mtime_secs: i64,
    ) -> Result<Vec<u8>, NameTooLong> {
        let mut name = String::from_utf8_lossy(name).into_owned().into_bytes();
        name.push(b'/');
        let member = self.member(name, MemberKind::Dir, mode, mtime_secs, 0)?;
        Ok(self.complete(member, &[]))
    }

    /// A symlink member whose content is `target`; returns its local header and content.
    pub(super) fn symlink(
        &mut self,
        name: &[u8],
        mode: u32,
        mtime_secs: i64,
        target: &[u8],
    ) -> Result<Vec<u8>, NameTooLong> {
        let name = String::from_utf8_lossy(name).into_owned().into_bytes();
        let size = target.len() as u64;
        let mut member = self.member(name, MemberKind::Symlink, mode, mtime_secs, size)?;
        member.crc = CRC32.checksum(target);
        Ok(self.complete(member, target))
    }

    /// Starts a file member of `size` bytes; returns its local header. The content follows
    /// through [`Self::content`], then [`Self::end_file`].
    pub(super) fn begin_file(
        &mut self,
        name: &[u8],
        mode: u32,
        mtime_secs: i64,
        size: u64,
    ) -> Result<Vec<u8>, NameTooLong> {
        let name = String::from_utf8_lossy(name).into_owned().into_bytes();
        let mut member = self.member(name, MemberKind::File, mode, mtime_secs, size)?;
        member.flags |= FLAG_DATA_DESCRIPTOR;
        let header = local_header(&member);
        self.offset += header.len() as u64;
        self.open = Some(OpenFile {
            member,
            digest: CRC32.digest(),
        });
        Ok(header)
    }

    /// Accounts for a piece of the open file's content (written as it is: stored).
    pub(super) fn content(&mut self, bytes: &[u8]) {
        if let Some(open) = self.open.as_mut() {
            open.digest.update(bytes);
        }
        self.offset += bytes.len() as u64;
    }

    /// Ends the open file; returns its data descriptor (empty when no file is open). The
    /// caller has checked that exactly the announced size was written.
    pub(super) fn end_file(&mut self) -> Vec<u8> {
        let Some(OpenFile { mut member, digest }) = self.open.take() else {
            return Vec::new();
        };
        member.crc = digest.finalize();
        let descriptor = data_descriptor(member.crc, member.size);
        self.offset += descriptor.len() as u64;
        self.record(&member);
        descriptor
    }

    /// The central directory and the end records (ZIP64 ones when needed).
    pub(super) fn finish(self) -> Vec<u8> {
        let mut out = self.central;
        let central_size = out.len() as u64;
        out.extend(end_records(self.entries, self.offset, central_size));
        out
    }

    fn member(
        &self,
        name: Vec<u8>,
        kind: MemberKind,
        mode: u32,
        mtime_secs: i64,
        size: u64,
    ) -> Result<Member, NameTooLong> {
        if u16::try_from(name.len()).is_err() {
            return Err(NameTooLong);
        }
        let kind_bits = match kind {
            MemberKind::File => S_IFREG,
            MemberKind::Dir => S_IFDIR,
            MemberKind::Symlink => S_IFLNK,
        };
        Ok(Member {
            name,
            mode: kind_bits | (mode & 0o7777),
            mtime_secs,
            offset: self.offset,
            flags: FLAG_UTF8,
            crc: 0,
            size,
        })
    }

    /// Emits a member whose content is known in full: header, content, no descriptor.
    fn complete(&mut self, member: Member, content: &[u8]) -> Vec<u8> {
        let mut out = local_header(&member);
        out.extend_from_slice(content);
        self.offset += out.len() as u64;
        self.record(&member);
        out
    }

    fn record(&mut self, member: &Member) {
        self.central.extend(central_record(member));
        self.entries += 1;
    }
}

/// A local file header. A streamed file (flag bit 3) has zero CRC and sizes here; a
/// streamed file of 4 GiB or more says so with 0xFFFFFFFF sizes and a zeroed ZIP64 field,
/// so that its descriptor's 8-byte sizes are expected.
fn local_header(member: &Member) -> Vec<u8> {
    let streamed = member.flags & FLAG_DATA_DESCRIPTOR != 0;
    let zip64 = member.size >= MAX_32;
    let crc = if streamed { 0 } else { member.crc };
    let size_field = match (zip64, streamed) {
        (true, _) => u32::MAX,
        (false, true) => 0,
        (false, false) => low_32(member.size),
    };
    let mut extra = timestamp_extra(member.mtime_secs);
    if zip64 {
        let size = if streamed { 0 } else { member.size };
        extra.extend(zip64_extra(&[size, size]));
    }
    let mut out = Vec::with_capacity(30 + member.name.len() + extra.len());
    put_u32(&mut out, LOCAL_HEADER);
    put_u16(&mut out, version_needed(zip64));
    put_u16(&mut out, member.flags);
    put_u16(&mut out, 0); // method: stored
    let (time, date) = dos_time(member.mtime_secs);
    put_u16(&mut out, time);
    put_u16(&mut out, date);
    put_u32(&mut out, crc);
    put_u32(&mut out, size_field);
    put_u32(&mut out, size_field);
    put_len_u16(&mut out, member.name.len());
    put_len_u16(&mut out, extra.len());
    out.extend_from_slice(&member.name);
    out.extend(extra);
    out
}

/// The data descriptor after a streamed file: signature, CRC-32, then compressed and
/// uncompressed sizes (equal: stored), 8 bytes each from 4 GiB on.
fn data_descriptor(crc: u32, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    put_u32(&mut out, DATA_DESCRIPTOR);
    put_u32(&mut out, crc);
    if size >= MAX_32 {
        put_u64(&mut out, size);
        put_u64(&mut out, size);
    } else {
        put_u32(&mut out, low_32(size));
        put_u32(&mut out, low_32(size));
    }
    out
}

/// A member's central-directory record; sizes and offset that reach 0xFFFFFFFF move into a
/// ZIP64 extra field (uncompressed, compressed, offset: the order APPNOTE 4.5.3 fixes).
fn central_record(member: &Member) -> Vec<u8> {
    let big_size = member.size >= MAX_32;
    let big_offset = member.offset >= MAX_32;
    let mut wide = Vec::new();
    if big_size {
        wide.extend([member.size, member.size]);
    }
    if big_offset {
        wide.push(member.offset);
    }
    let mut extra = Vec::new();
    if !wide.is_empty() {
        extra.extend(zip64_extra(&wide));
    }
    extra.extend(timestamp_extra(member.mtime_secs));
    let size_field = if big_size {
        u32::MAX
    } else {
        low_32(member.size)
    };
    let offset_field = if big_offset {
        u32::MAX
    } else {
        low_32(member.offset)
    };
    let dos_attributes = if member.mode & S_IFMT == S_IFDIR {
        DOS_DIRECTORY
    } else {
        0
    };
    let zip64 = !wide.is_empty();
    let mut out = Vec::with_capacity(46 + member.name.len() + extra.len());
    put_u32(&mut out, CENTRAL_HEADER);
    put_u16(&mut out, MADE_BY_UNIX | VERSION_ZIP64);
    put_u16(&mut out, version_needed(zip64));
    put_u16(&mut out, member.flags);
    put_u16(&mut out, 0); // method: stored
    let (time, date) = dos_time(member.mtime_secs);
    put_u16(&mut out, time);
    put_u16(&mut out, date);
    put_u32(&mut out, member.crc);
    put_u32(&mut out, size_field);
    put_u32(&mut out, size_field);
    put_len_u16(&mut out, member.name.len());
    put_len_u16(&mut out, extra.len());
    put_u16(&mut out, 0); // comment length
    put_u16(&mut out, 0); // disk number
    put_u16(&mut out, 0); // internal attributes
    put_u32(&mut out, (member.mode << 16) | dos_attributes);
    put_u32(&mut out, offset_field);
    out.extend_from_slice(&member.name);
    out.extend(extra);
    out
}

/// The end-of-central-directory record, preceded by the ZIP64 end record and its locator
/// when the member count, the directory's size or its offset does not fit.
fn end_records(entries: u64, central_offset: u64, central_size: u64) -> Vec<u8> {
    let zip64 = entries >= MAX_16 || central_size >= MAX_32 || central_offset >= MAX_32;
    let mut out = Vec::new();
    if zip64 {
        let zip64_end_offset = central_offset + central_size;
        put_u32(&mut out, ZIP64_END);
        put_u64(&mut out, 44); // size of the rest of this record
        put_u16(&mut out, MADE_BY_UNIX | VERSION_ZIP64);
        put_u16(&mut out, VERSION_ZIP64);
        put_u32(&mut out, 0); // this disk
        put_u32(&mut out, 0); // disk of the central directory
        put_u64(&mut out, entries);
        put_u64(&mut out, entries);
        put_u64(&mut out, central_size);
        put_u64(&mut out, central_offset);
        put_u32(&mut out, ZIP64_LOCATOR);
        put_u32(&mut out, 0); // disk of the ZIP64 end record
        put_u64(&mut out, zip64_end_offset);
        put_u32(&mut out, 1); // disks
    }
    let entries_field = u16::try_from(entries.min(MAX_16)).unwrap_or(u16::MAX);
    put_u32(&mut out, END);
    put_u16(&mut out, 0); // this disk
    put_u16(&mut out, 0); // disk of the central directory
    put_u16(&mut out, entries_field);
    put_u16(&mut out, entries_field);
    put_u32(&mut out, low_32(central_size.min(MAX_32)));
    put_u32(&mut out, low_32(central_offset.min(MAX_32)));
    put_u16(&mut out, 0); // comment length
    out
}

fn zip64_extra(values: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * values.len());
    put_u16(&mut out, EXTRA_ZIP64);
    put_len_u16(&mut out, 8 * values.len());
    for value in values {
        put_u64(&mut out, *value);
    }
    out
}

/// The extended timestamp (0x5455) with the modification time; empty when the time does
/// not fit its signed 32-bit field.
fn timestamp_extra(mtime_secs: i64) -> Vec<u8> {
    let Ok(mtime) = i32::try_from(mtime_secs) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(9);
    put_u16(&mut out, EXTRA_TIMESTAMP);
    put_u16(&mut out, 5);
    out.push(TIMESTAMP_MTIME);
    out.extend_from_slice(&mtime.to_le_bytes());
    out
}

/// The DOS (time, date) fields of a Unix time, in UTC, clamped to 1980-01-01 00:00:00 ..
/// 2107-12-31 23:59:58.
fn dos_time(secs: i64) -> (u16, u16) {
    const FIRST: (u16, u16) = (0, (1 << 5) | 1);
    const LAST: (u16, u16) = ((23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31);
    let Ok(time) = jiff::Timestamp::from_second(secs) else {
        return if secs < 0 { FIRST } else { LAST };
    };
    let civil = jiff::tz::TimeZone::UTC.to_datetime(time);
    let year = civil.year();
    if year < 1980 {
        return FIRST;
    }
    if year > 2107 {
        return LAST;
    }
    let field = |value: i8| u16::try_from(value).unwrap_or(0);
    let years = u16::try_from(year - 1980).unwrap_or(0);
    (
        (field(civil.hour()) << 11) | (field(civil.minute()) << 5) | (field(civil.second()) / 2),
        (years << 9) | (field(civil.month()) << 5) | field(civil.day()),
    )
}

fn version_needed(zip64: bool) -> u16 {
    if zip64 { VERSION_ZIP64 } else { VERSION_PLAIN }
}

/// The low 32 bits of a value the caller checked is below 0xFFFFFFFF.
fn low_32(value: u64) -> u32 {
    u32::try_from(value & MAX_32).unwrap_or(u32::MAX)
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// A length already checked to fit (names by [`ZipEncoder::member`], extras by
/// construction).
fn put_len_u16(out: &mut Vec<u8>, len: usize) {
    put_u16(out, u16::try_from(len).unwrap_or(u16::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_streamed_file_of_4_gib_announces_zip64_and_its_descriptor_has_8_byte_sizes() {
        let member = file_member(5 * GIB, 0);

        let header = local_header(&member);
        let descriptor = data_descriptor(0xDEAD_BEEF, 5 * GIB);

        assert_eq!(u16_at(&header, 4), VERSION_ZIP64);
        assert_eq!(u32_at(&header, 14), 0, "crc comes in the descriptor");
        assert_eq!([u32_at(&header, 18), u32_at(&header, 22)], [u32::MAX; 2]);
        let name_len = usize::from(u16_at(&header, 26));
        let extras = extra_fields(&header[30 + name_len..]);
        assert_eq!(extras[&EXTRA_ZIP64], [0; 16]);
        assert_eq!(descriptor.len(), 24);
        assert_eq!(u32_at(&descriptor, 0), DATA_DESCRIPTOR);
        assert_eq!(u32_at(&descriptor, 4), 0xDEAD_BEEF);
        assert_eq!(
            [u64_at(&descriptor, 8), u64_at(&descriptor, 16)],
            [5 * GIB; 2]
        );
    }

    #[test]
    fn below_0xffffffff_nothing_is_zip64_and_at_it_everything_is() {
        let small = file_member(MAX_32 - 1, MAX_32 - 1);
        let header = local_header(&small);
        let central = central_record(&small);

        assert_eq!(u16_at(&header, 4), VERSION_PLAIN);
        assert_eq!([u32_at(&header, 18), u32_at(&header, 22)], [0, 0]);
        assert_eq!(data_descriptor(1, MAX_32 - 1).len(), 16);
        assert_eq!(u32_at(&central, 20), u32::try_from(MAX_32 - 1).unwrap());
        assert_eq!(u32_at(&central, 42), u32::try_from(MAX_32 - 1).unwrap());
        assert!(!central_extras(&central).contains_key(&EXTRA_ZIP64));
        assert_eq!(end_records(MAX_16 - 1, MAX_32 - 1, 10).len(), 22);

        let big = file_member(MAX_32, MAX_32);
        let central = central_record(&big);
        assert_eq!(u16_at(&central, 6), VERSION_ZIP64);
        assert_eq!([u32_at(&central, 20), u32_at(&central, 24)], [u32::MAX; 2]);
        assert_eq!(u32_at(&central, 42), u32::MAX);
        let wide = &central_extras(&central)[&EXTRA_ZIP64];
        assert_eq!(
            [u64_at(wide, 0), u64_at(wide, 8), u64_at(wide, 16)],
            [MAX_32; 3]
        );
        assert_eq!(data_descriptor(1, MAX_32).len(), 24);
        assert_eq!(end_records(MAX_16, 10, 10).len(), 56 + 20 + 22);
    }

    #[test]
    fn a_member_past_4_gib_has_its_offset_in_zip64_and_the_archive_ends_with_zip64_records() {
        let mut zip = ZipEncoder {
            offset: 6 * GIB,
            ..ZipEncoder::default()
        };

        let header = zip.directory(b"dir", 0o40_755, 0).unwrap();
        let end = zip.finish();

        let central = &end[..46 + 4 + 4 + 8 + 9];
        assert_eq!(u32_at(central, 0), CENTRAL_HEADER);
        assert_eq!(&central[46..50], b"dir/");
        assert_eq!(u32_at(central, 42), u32::MAX);
        let wide = &central_extras(central)[&EXTRA_ZIP64];
        assert_eq!(wide.len(), 8, "only the offset is wide");
        assert_eq!(u64_at(wide, 0), 6 * GIB);
        let central_offset = 6 * GIB + header.len() as u64;
        let zip64_end = &end[central.len()..];
        assert_eq!(u32_at(zip64_end, 0), ZIP64_END);
        assert_eq!(u64_at(zip64_end, 24), 1, "members");
        assert_eq!(u64_at(zip64_end, 40), central.len() as u64);
        assert_eq!(u64_at(zip64_end, 48), central_offset);
        let locator = &zip64_end[56..];
        assert_eq!(u32_at(locator, 0), ZIP64_LOCATOR);
        assert_eq!(u64_at(locator, 8), central_offset + central.len() as u64);
        let last = &locator[20..];
        assert_eq!(last.len(), 22);
        assert_eq!(u32_at(last, 0), END);
        assert_eq!(u16_at(last, 10), 1);
        assert_eq!(u32_at(last, 16), u32::MAX, "central directory offset");
    }

    #[test]
    fn offsets_count_every_byte_written_content_included() {
        let mut zip = ZipEncoder::default();
        let mut archive = zip.directory(b"d", 0o755, 0).unwrap();
        let second = archive.len();
        archive.extend(zip.begin_file(b"d/f", 0o644, 0, 5).unwrap());
        zip.content(b"hello");
        archive.extend_from_slice(b"hello");
        archive.extend(zip.end_file());
        let third = archive.len();
        archive.extend(zip.symlink(b"d/l", 0o777, 0, b"f").unwrap());
        let central = archive.len();
        archive.extend(zip.finish());

        let mut offsets = Vec::new();
        let mut at = central;
        while u32_at(&archive, at) == CENTRAL_HEADER {
            offsets.push(u32_at(&archive, at + 42) as usize);
            let variable = (28..=32)
                .step_by(2)
                .map(|field| usize::from(u16_at(&archive, at + field)))
                .sum::<usize>();
            at += 46 + variable;
        }
        assert_eq!(offsets, [0, second, third]);
        let end = &archive[at..];
        assert_eq!(u32_at(end, 16) as usize, central);
        assert_eq!(u32_at(&archive, third - 16), DATA_DESCRIPTOR);
        assert_eq!(u32_at(&archive, third - 12), CRC32.checksum(b"hello"));
    }

    #[test]
    fn dos_times_are_utc_to_two_seconds_and_clamped_to_1980_through_2107() {
        // 2021-03-04 05:06:09 UTC
        let (time, date) = dos_time(1_614_834_369);
        assert_eq!(time, (5 << 11) | (6 << 5) | 4);
        assert_eq!(date, (41 << 9) | (3 << 5) | 4);
        assert_eq!(dos_time(0), (0, (1 << 5) | 1));
        assert_eq!(dos_time(-1), (0, (1 << 5) | 1));
        assert_eq!(dos_time(i64::MAX).1, (127 << 9) | (12 << 5) | 31);
        assert_eq!(
            dos_time(5_000_000_000),
            dos_time(i64::MAX),
            "2128 is past 2107"
        );
    }

    #[test]
    fn the_extended_timestamp_holds_the_exact_mtime_when_it_fits_32_bits() {
        assert_eq!(
            timestamp_extra(1_614_834_369),
            [0x55, 0x54, 5, 0, 1, 0xC1, 0x6A, 0x40, 0x60]
        );
        assert!(timestamp_extra(i64::from(i32::MAX) + 1).is_empty());
    }

    #[test]
    fn names_are_utf8_flagged_lossy_and_modes_carry_the_type() {
        let mut zip = ZipEncoder::default();
        let header = zip.symlink(b"bad\xffname", 0o120_777, 0, b"t").unwrap();
        assert_eq!(u16_at(&header, 6) & FLAG_UTF8, FLAG_UTF8);
        assert_eq!(&header[30..30 + 10], "bad\u{FFFD}name".as_bytes());
        let central = zip.finish();
        assert_eq!(u32_at(&central, 38) >> 16, S_IFLNK | 0o777);
        assert!(
            ZipEncoder::default()
                .directory(&vec![b'n'; 65_535], 0, 0)
                .is_err(),
            "the slash makes it 65,536"
        );
    }

    fn file_member(size: u64, offset: u64) -> Member {
        Member {
            name: b"big".to_vec(),
            mode: S_IFREG | 0o644,
            mtime_secs: 0,
            offset,
            flags: FLAG_UTF8 | FLAG_DATA_DESCRIPTOR,
            crc: 7,
            size,
        }
    }

    fn central_extras(central: &[u8]) -> std::collections::BTreeMap<u16, Vec<u8>> {
        let name_len = usize::from(u16_at(central, 28));
        let extra_len = usize::from(u16_at(central, 30));
        extra_fields(&central[46 + name_len..46 + name_len + extra_len])
    }

    fn extra_fields(mut bytes: &[u8]) -> std::collections::BTreeMap<u16, Vec<u8>> {
        let mut fields = std::collections::BTreeMap::new();
        while bytes.len() >= 4 {
            let len = usize::from(u16_at(bytes, 2));
            fields.insert(u16_at(bytes, 0), bytes[4..4 + len].to_vec());
            bytes = &bytes[4 + len..];
        }
        fields
    }

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }
}
