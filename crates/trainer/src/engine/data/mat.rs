//! A small reader for MATLAB v5 `.mat` files.
//!
//! The Stanford Dogs split lists (`lists/*.mat`) are MATLAB v5 files holding cell arrays of
//! strings, which the `matfile` crate cannot read. This reader covers exactly what such files
//! need — numeric arrays, char arrays and cell arrays, compressed or not — and reports anything
//! else as [`MatValue::Unsupported`] instead of failing, so one odd variable does not make a
//! whole list unreadable.
//!
//! Every read is bounds-checked: malformed input gives a [`MatError`] naming the byte offset,
//! never a panic, and no allocation is sized from an unchecked count in the file.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

mod element;
use element::{parse_matrix, read_tag, MI_COMPRESSED, MI_MATRIX};

/// Length of the fixed text/version/endianness header.
const HEADER_LEN: usize = 128;
/// A zlib stream may not inflate beyond this (guards against decompression bombs).
const MAX_INFLATED: u64 = 1 << 30;

/// One MATLAB variable (or cell element).
#[derive(Clone, Debug, PartialEq)]
pub enum MatValue {
    /// Any numeric class, converted to f64 whatever the stored type; column-major.
    Numeric { dims: Vec<usize>, data: Vec<f64> },
    /// A char array; rows of a 2-D array are joined with `'\n'`.
    Char(String),
    /// A cell array; items in column-major order.
    Cell {
        dims: Vec<usize>,
        items: Vec<MatValue>,
    },
    /// A class this reader does not decode (struct, sparse, object, ...), by class number.
    Unsupported(u8),
}

impl MatValue {
    /// The strings of a cell array of char arrays (an empty numeric cell reads as `""`,
    /// which is how some writers store empty strings); `None` for anything else.
    pub fn as_strings(&self) -> Option<Vec<String>> {
        let MatValue::Cell { items, .. } = self else {
            return None;
        };
        items
            .iter()
            .map(|item| match item {
                MatValue::Char(s) => Some(s.clone()),
                MatValue::Numeric { data, .. } if data.is_empty() => Some(String::new()),
                _ => None,
            })
            .collect()
    }

    /// The values of a numeric array, column-major; `None` for anything else.
    pub fn as_f64(&self) -> Option<&[f64]> {
        match self {
            MatValue::Numeric { data, .. } => Some(data),
            _ => None,
        }
    }
}

/// Why a `.mat` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MatError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a MATLAB v5 file: {0}")]
    NotMat5(String),
    #[error("MATLAB v7.3 (HDF5) files are not supported; re-save with `save -v7`")]
    Hdf5,
    #[error("big-endian MAT files are not supported")]
    BigEndian,
    #[error("truncated at byte {offset}: need {needed} bytes, {available} left")]
    Truncated {
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("at byte {offset}: expected {expected}, found data type {found}")]
    UnexpectedType {
        offset: usize,
        expected: &'static str,
        found: u32,
    },
    #[error("at byte {offset}: {message}")]
    Malformed { offset: usize, message: String },
    #[error("at byte {offset}: cannot inflate compressed element: {source}")]
    Inflate {
        offset: usize,
        source: std::io::Error,
    },
    #[error("in the compressed element at byte {offset}: {source}")]
    InCompressed {
        offset: usize,
        source: Box<MatError>,
    },
}

/// Reads and parses a MAT v5 file into its named variables.
pub fn read_mat(path: &Path) -> Result<HashMap<String, MatValue>, MatError> {
    let bytes = std::fs::read(path).map_err(|source| MatError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_mat(&bytes)
}

/// Parses the bytes of a MAT v5 file into its named variables (unnamed elements are dropped).
pub fn parse_mat(bytes: &[u8]) -> Result<HashMap<String, MatValue>, MatError> {
    check_header(bytes)?;
    let mut vars = HashMap::new();
    read_top_level(bytes, HEADER_LEN, &mut vars, true)?;
    Ok(vars)
}

/// Validates the 128-byte header: v5 text, version 0x0100, little-endian indicator.
fn check_header(bytes: &[u8]) -> Result<(), MatError> {
    if bytes.len() < HEADER_LEN {
        return Err(MatError::NotMat5(format!(
            "{} bytes, shorter than the 128-byte header",
            bytes.len()
        )));
    }
    if bytes.starts_with(b"MATLAB 7.3") || bytes[124..126] == [0x02, 0x00] {
        return Err(MatError::Hdf5);
    }
    match &bytes[126..128] {
        b"IM" => {}
        b"MI" => return Err(MatError::BigEndian),
        other => {
            return Err(MatError::NotMat5(format!(
                "endian indicator is {other:?}, expected \"IM\""
            )))
        }
    }
    let version = u16::from_le_bytes([bytes[124], bytes[125]]);
    if version != 0x0100 {
        return Err(MatError::NotMat5(format!("version {version:#06x}")));
    }
    Ok(())
}

/// Walks the elements of `buf` from `start`: matrices become variables, compressed elements
/// are inflated (only when `allow_compressed`: they never nest), anything else is skipped.
fn read_top_level(
    buf: &[u8],
    start: usize,
    vars: &mut HashMap<String, MatValue>,
    allow_compressed: bool,
) -> Result<(), MatError> {
    let mut pos = start;
    while pos < buf.len() {
        let tag = read_tag(buf, pos)?;
        match tag.ty {
            MI_MATRIX => {
                let (name, value) = parse_matrix(buf, &tag, 0)?;
                if !name.is_empty() {
                    vars.insert(name, value);
                }
            }
            MI_COMPRESSED if allow_compressed => {
                let inflated = inflate(&buf[tag.data.clone()], tag.offset)?;
                read_top_level(&inflated, 0, vars, false).map_err(|e| MatError::InCompressed {
                    offset: tag.offset,
                    source: Box::new(e),
                })?;
            }
            _ => {}
        }
        // Compressed elements are not padded; everything else is padded to 8 bytes, except
        // that some writers omit the padding of the very last element.
        pos = if tag.ty == MI_COMPRESSED {
            tag.data.end
        } else {
            tag.next.min(buf.len())
        };
    }
    Ok(())
}

fn inflate(data: &[u8], offset: usize) -> Result<Vec<u8>, MatError> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|source| MatError::Inflate { offset, source })?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(MatError::Malformed {
            offset,
            message: format!("compressed element inflates beyond {MAX_INFLATED} bytes"),
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests;
