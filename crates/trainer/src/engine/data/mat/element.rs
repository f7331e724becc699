//! Element-level decoding: tags, matrices, and the conversion of stored data to values.
//!
//! Split from the file-level code so that every bounds check on element contents sits in one
//! place; each function takes the whole buffer plus ranges so error offsets stay absolute.

use super::{MatError, MatValue};

/// Cells nest; cap the recursion so a hostile file cannot overflow the stack.
pub(super) const MAX_DEPTH: usize = 64;

// Data types of tagged elements (the `mi*` constants of the format).
pub(super) const MI_INT8: u32 = 1;
pub(super) const MI_UINT8: u32 = 2;
pub(super) const MI_INT16: u32 = 3;
pub(super) const MI_UINT16: u32 = 4;
pub(super) const MI_INT32: u32 = 5;
pub(super) const MI_UINT32: u32 = 6;
pub(super) const MI_SINGLE: u32 = 7;
pub(super) const MI_DOUBLE: u32 = 9;
pub(super) const MI_INT64: u32 = 12;
pub(super) const MI_UINT64: u32 = 13;
pub(super) const MI_MATRIX: u32 = 14;
pub(super) const MI_COMPRESSED: u32 = 15;
pub(super) const MI_UTF8: u32 = 16;
pub(super) const MI_UTF16: u32 = 17;
pub(super) const MI_UTF32: u32 = 18;

// Array classes (the `mx*` constants) that get a dedicated representation.
pub(super) const MX_CELL: u8 = 1;
pub(super) const MX_CHAR: u8 = 4;

/// A decoded element tag: where its data lies and where the next element starts.
pub(super) struct Tag {
    pub(super) offset: usize,
    pub(super) ty: u32,
    pub(super) data: std::ops::Range<usize>,
    pub(super) next: usize,
}

fn u32_at(buf: &[u8], offset: usize) -> Result<u32, MatError> {
    buf.get(offset..offset.saturating_add(4))
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(MatError::Truncated {
            offset,
            needed: 4,
            available: buf.len().saturating_sub(offset),
        })
}

/// Reads the tag at `pos`, in the normal (8-byte) or small-data-element (4-byte) format.
pub(super) fn read_tag(buf: &[u8], pos: usize) -> Result<Tag, MatError> {
    let first = u32_at(buf, pos)?;
    if first >> 16 != 0 {
        let (ty, len) = (first & 0xffff, (first >> 16) as usize);
        if len > 4 {
            return Err(MatError::Malformed {
                offset: pos,
                message: format!("small data element claims {len} bytes (at most 4)"),
            });
        }
        let start = pos + 4;
        let next = pos.saturating_add(8);
        if start + len > buf.len() {
            return Err(MatError::Truncated {
                offset: start,
                needed: len,
                available: buf.len().saturating_sub(start),
            });
        }
        return Ok(Tag {
            offset: pos,
            ty,
            data: start..start + len,
            next,
        });
    }
    let len = u32_at(buf, pos + 4)? as usize;
    let start = pos + 8;
    let available = buf.len() - start;
    if len > available {
        return Err(MatError::Truncated {
            offset: start,
            needed: len,
            available,
        });
    }
    Ok(Tag {
        offset: pos,
        ty: first,
        data: start..start + len,
        next: start.saturating_add(len.div_ceil(8).saturating_mul(8)),
    })
}

/// Reads the next sub-element of a matrix, which must lie within `end`.
fn sub_element(buf: &[u8], pos: usize, end: usize) -> Result<Tag, MatError> {
    let tag = read_tag(&buf[..end], pos)?;
    Ok(Tag {
        next: tag.next.min(end),
        ..tag
    })
}

/// Parses one `miMATRIX` element into its name and value.
pub(super) fn parse_matrix(
    buf: &[u8],
    tag: &Tag,
    depth: usize,
) -> Result<(String, MatValue), MatError> {
    if depth > MAX_DEPTH {
        return Err(MatError::Malformed {
            offset: tag.offset,
            message: format!("cells nested deeper than {MAX_DEPTH}"),
        });
    }
    if tag.data.is_empty() {
        // Writers store an empty array (e.g. an empty cell element) as a bare tag.
        let value = MatValue::Numeric {
            dims: vec![0, 0],
            data: Vec::new(),
        };
        return Ok((String::new(), value));
    }
    let end = tag.data.end;
    let h = header(buf, tag)?;
    let value = match h.class {
        MX_CELL => MatValue::Cell {
            items: cell_items(buf, h.data_at, end, h.count, depth)?,
            dims: h.dims,
        },
        MX_CHAR => {
            let data = sub_element(buf, h.data_at, end)?;
            MatValue::Char(decode_chars(
                &buf[data.data.clone()],
                &data,
                &h.dims,
                h.count,
            )?)
        }
        6..=15 => {
            let real = sub_element(buf, h.data_at, end)?;
            let data = numbers(&buf[real.data.clone()], &real)?;
            if data.len() != h.count {
                return Err(malformed(
                    real.offset,
                    &format!("{} values for dimensions {:?}", data.len(), h.dims),
                ));
            }
            MatValue::Numeric { dims: h.dims, data }
        }
        other => MatValue::Unsupported(other),
    };
    Ok((h.name, value))
}

/// The sub-elements every array starts with: flags (class), dimensions, name.
struct Header {
    class: u8,
    dims: Vec<usize>,
    /// Number of elements the dimensions imply.
    count: usize,
    name: String,
    /// Offset of the first data sub-element.
    data_at: usize,
}

fn header(buf: &[u8], tag: &Tag) -> Result<Header, MatError> {
    let end = tag.data.end;
    let flags = sub_element(buf, tag.data.start, end)?;
    expect_type(&flags, &[MI_UINT32], "array flags (miUINT32)")?;
    let class = buf
        .get(flags.data.start)
        .copied()
        .filter(|_| flags.data.len() >= 8)
        .ok_or_else(|| malformed(flags.offset, "array flags shorter than 8 bytes"))?;
    let dims_tag = sub_element(buf, flags.next, end)?;
    expect_type(&dims_tag, &[MI_INT32], "dimensions (miINT32)")?;
    let dims = buf[dims_tag.data.clone()]
        .chunks_exact(4)
        .map(|c| usize::try_from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| malformed(dims_tag.offset, "negative dimension"))?;
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| malformed(dims_tag.offset, "dimensions overflow"))?;
    let name_tag = sub_element(buf, dims_tag.next, end)?;
    expect_type(&name_tag, &[MI_INT8, MI_UINT8], "array name (miINT8)")?;
    Ok(Header {
        class,
        dims,
        count,
        name: String::from_utf8_lossy(&buf[name_tag.data.clone()]).into_owned(),
        data_at: name_tag.next,
    })
}

/// The `count` arrays of a cell, each a nested `miMATRIX`.
fn cell_items(
    buf: &[u8],
    mut pos: usize,
    end: usize,
    count: usize,
    depth: usize,
) -> Result<Vec<MatValue>, MatError> {
    let mut items = Vec::new();
    for _ in 0..count {
        let item = sub_element(buf, pos, end)?;
        expect_type(&item, &[MI_MATRIX], "cell element (miMATRIX)")?;
        items.push(parse_matrix(buf, &item, depth + 1)?.1);
        pos = item.next;
    }
    Ok(items)
}

pub(super) fn malformed(offset: usize, message: &str) -> MatError {
    MatError::Malformed {
        offset,
        message: message.to_string(),
    }
}

fn expect_type(tag: &Tag, allowed: &[u32], expected: &'static str) -> Result<(), MatError> {
    if allowed.contains(&tag.ty) {
        Ok(())
    } else {
        Err(MatError::UnexpectedType {
            offset: tag.offset,
            expected,
            found: tag.ty,
        })
    }
}

/// Converts the stored numbers (whatever their type) to f64.
fn numbers(bytes: &[u8], tag: &Tag) -> Result<Vec<f64>, MatError> {
    fn conv<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    let width = match tag.ty {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        _ => {
            return Err(MatError::UnexpectedType {
                offset: tag.offset,
                expected: "numeric data",
                found: tag.ty,
            })
        }
    };
    if !bytes.len().is_multiple_of(width) {
        return Err(malformed(
            tag.offset,
            "data length is not a whole number of values",
        ));
    }
    Ok(match tag.ty {
        MI_INT8 => conv(bytes, |b: [u8; 1]| f64::from(b[0] as i8)),
        MI_UINT8 => conv(bytes, |b: [u8; 1]| f64::from(b[0])),
        MI_INT16 => conv(bytes, |b| f64::from(i16::from_le_bytes(b))),
        MI_UINT16 => conv(bytes, |b| f64::from(u16::from_le_bytes(b))),
        MI_INT32 => conv(bytes, |b| f64::from(i32::from_le_bytes(b))),
        MI_UINT32 => conv(bytes, |b| f64::from(u32::from_le_bytes(b))),
        MI_SINGLE => conv(bytes, |b| f64::from(f32::from_le_bytes(b))),
        MI_INT64 => conv(bytes, |b| i64::from_le_bytes(b) as f64),
        MI_UINT64 => conv(bytes, |b| u64::from_le_bytes(b) as f64),
        _ => conv(bytes, f64::from_le_bytes),
    })
}

/// Decodes char data (UTF-16, UTF-8 or UTF-32) and undoes MATLAB's column-major layout.
fn decode_chars(bytes: &[u8], tag: &Tag, dims: &[usize], count: usize) -> Result<String, MatError> {
    let chars: Vec<char> = match tag.ty {
        MI_UINT16 | MI_UTF16 | MI_INT16 => {
            let units = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<_, _>>()
                .map_err(|_| malformed(tag.offset, "invalid UTF-16 in char array"))?
        }
        MI_UTF8 | MI_UINT8 | MI_INT8 => std::str::from_utf8(bytes)
            .map_err(|_| malformed(tag.offset, "invalid UTF-8 in char array"))?
            .chars()
            .collect(),
        MI_UTF32 | MI_UINT32 | MI_INT32 => bytes
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<Option<_>>()
            .ok_or_else(|| malformed(tag.offset, "invalid UTF-32 in char array"))?,
        _ => {
            return Err(MatError::UnexpectedType {
                offset: tag.offset,
                expected: "char data (miUINT16/miUTF8/miUTF16/miUTF32)",
                found: tag.ty,
            })
        }
    };
    let rows = dims.first().copied().unwrap_or(0);
    if rows <= 1 || count == 0 || chars.len() != count {
        // A row string (or a UTF-8 array whose byte count differs): the chars in order.
        return Ok(chars.into_iter().collect());
    }
    let cols = count / rows;
    let lines: Vec<String> = (0..rows)
        .map(|r| (0..cols).map(|c| chars[r + rows * c]).collect())
        .collect();
    Ok(lines.join("\n"))
}
