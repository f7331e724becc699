//! Round-trip tests against a tiny MAT v5 writer, robustness tests on garbled input, and a
//! check against the real Stanford Dogs lists when `../shared/data` is present.

use super::element::*;
use super::*;
use rand::{Rng, SeedableRng};
use std::io::Write;

/// Appends an element with a normal 8-byte tag, padded to 8 bytes.
fn elem(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(8) * 8, 0);
    out
}

/// An element in the small-data-element format (at most 4 bytes of data).
fn small(ty: u32, data: &[u8]) -> Vec<u8> {
    assert!(data.len() <= 4);
    let mut out = ((data.len() as u32) << 16 | ty).to_le_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(8, 0);
    out
}

/// A miMATRIX element; short names use the small format, like MATLAB does.
fn matrix(class: u8, dims: &[i32], name: &str, body: &[u8]) -> Vec<u8> {
    let mut inner = elem(MI_UINT32, &[class, 0, 0, 0, 0, 0, 0, 0]);
    let dims: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
    inner.extend(elem(MI_INT32, &dims));
    if !name.is_empty() && name.len() <= 4 {
        inner.extend(small(MI_INT8, name.as_bytes()));
    } else {
        inner.extend(elem(MI_INT8, name.as_bytes()));
    }
    inner.extend_from_slice(body);
    elem(MI_MATRIX, &inner)
}

/// A 1×N char row stored as miUINT16 (UTF-16 code units), as MATLAB writes it.
fn char_row(s: &str) -> Vec<u8> {
    let units: Vec<u16> = s.encode_utf16().collect();
    let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
    matrix(
        MX_CHAR,
        &[1, units.len() as i32],
        "",
        &elem(MI_UINT16, &bytes),
    )
}

pub(crate) fn cell_column(name: &str, strings: &[&str]) -> Vec<u8> {
    let body: Vec<u8> = strings.iter().flat_map(|s| char_row(s)).collect();
    matrix(MX_CELL, &[strings.len() as i32, 1], name, &body)
}

/// A double column; `small_u8` stores it as a small miUINT8 element (≤ 4 values).
pub(crate) fn double_column(name: &str, values: &[f64], small_u8: bool) -> Vec<u8> {
    let body = if small_u8 {
        small(
            MI_UINT8,
            &values.iter().map(|&v| v as u8).collect::<Vec<_>>(),
        )
    } else {
        elem(
            MI_DOUBLE,
            &values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>(),
        )
    };
    matrix(6, &[values.len() as i32, 1], name, &body)
}

fn header() -> Vec<u8> {
    let mut h = b"MATLAB 5.0 MAT-file, written by the simsiam test writer".to_vec();
    h.resize(116, b' ');
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&0x0100u16.to_le_bytes());
    h.extend_from_slice(b"IM");
    h
}

pub(crate) fn mat_file(vars: &[Vec<u8>], compress: bool) -> Vec<u8> {
    let mut out = header();
    for var in vars {
        if compress {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(var).expect("writing to a Vec cannot fail");
            let packed = z.finish().expect("finishing a Vec encoder cannot fail");
            out.extend_from_slice(&MI_COMPRESSED.to_le_bytes());
            out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            out.extend_from_slice(&packed); // compressed elements are not padded
        } else {
            out.extend_from_slice(var);
        }
    }
    out
}

const FILES: [&str; 3] = [
    "n02085620-Chihuahua/n02085620_10074.jpg",
    "n02085620-Chihuahua/n02085620_10131.jpg",
    "n02085782-Japanese_spaniel/n02085782_1039.jpg",
];

fn official(compress: bool) -> Vec<u8> {
    let annotations: Vec<&str> = FILES.iter().map(|f| f.trim_end_matches(".jpg")).collect();
    mat_file(
        &[
            cell_column("file_list", &FILES),
            cell_column("annotation_list", &annotations),
            double_column("labels", &[1.0, 1.0, 2.0], false),
        ],
        compress,
    )
}

fn check_official(vars: &HashMap<String, MatValue>) {
    assert_eq!(vars.len(), 3);
    assert_eq!(vars["file_list"].as_strings().unwrap(), FILES);
    assert_eq!(
        vars["annotation_list"].as_strings().unwrap()[2],
        "n02085782-Japanese_spaniel/n02085782_1039"
    );
    assert_eq!(vars["labels"].as_f64().unwrap(), &[1.0, 1.0, 2.0]);
    assert!(matches!(&vars["file_list"], MatValue::Cell { dims, .. } if dims == &[3, 1]));
    assert_eq!(vars["labels"].as_strings(), None);
    assert_eq!(vars["file_list"].as_f64(), None);
}

#[test]
fn round_trips_uncompressed_official_structure() {
    check_official(&parse_mat(&official(false)).unwrap());
}

#[test]
fn round_trips_compressed_official_structure() {
    check_official(&parse_mat(&official(true)).unwrap());
}

#[test]
fn reads_small_data_elements_and_integer_storage() {
    let bytes = mat_file(&[double_column("lab", &[3.0, 120.0, 7.0], true)], false);
    let vars = parse_mat(&bytes).unwrap();
    let MatValue::Numeric { dims, data } = &vars["lab"] else {
        panic!("expected numeric, got {:?}", vars["lab"]);
    };
    assert_eq!(dims, &[3, 1]);
    assert_eq!(data, &[3.0, 120.0, 7.0]);
}

#[test]
fn decodes_2d_char_arrays_column_major_and_non_ascii() {
    // "abc" over "def", stored column-major as "adbecf".
    let body = elem(MI_UTF8, b"adbecf");
    let grid = matrix(MX_CHAR, &[2, 3], "grid", &body);
    let vars = parse_mat(&mat_file(&[grid, cell_column("u", &["Café 🐕"])], true)).unwrap();
    assert_eq!(vars["grid"], MatValue::Char("abc\ndef".into()));
    assert_eq!(vars["u"].as_strings().unwrap(), ["Café 🐕"]);
}

#[test]
fn empty_cell_elements_and_unsupported_classes() {
    let mut body = char_row("a");
    body.extend(elem(MI_MATRIX, &[])); // an empty element, as MATLAB writes `{}` items
    let cell = matrix(MX_CELL, &[2, 1], "c", &body);
    let structure = matrix(2, &[1, 1], "s", &elem(MI_INT8, b"field"));
    let vars = parse_mat(&mat_file(&[structure, cell], false)).unwrap();
    assert_eq!(vars["s"], MatValue::Unsupported(2));
    assert_eq!(vars["c"].as_strings().unwrap(), ["a", ""]);
}

#[test]
fn rejects_bad_headers_clearly() {
    let good = official(false);
    let mut big = good.clone();
    big[126..128].copy_from_slice(b"MI");
    assert!(matches!(parse_mat(&big), Err(MatError::BigEndian)));
    let mut hdf = good.clone();
    hdf[..10].copy_from_slice(b"MATLAB 7.3");
    assert!(matches!(parse_mat(&hdf), Err(MatError::Hdf5)));
    assert!(matches!(parse_mat(&good[..100]), Err(MatError::NotMat5(_))));
    let mut junk = good;
    junk[126..128].copy_from_slice(b"??");
    assert!(matches!(parse_mat(&junk), Err(MatError::NotMat5(_))));
}

#[test]
fn errors_name_the_byte_offset() {
    let mut bytes = official(false);
    // The first variable's dimensions tag sits after its 8-byte tag and 16-byte flags element.
    bytes[128 + 8 + 16] = 99;
    match parse_mat(&bytes) {
        Err(MatError::UnexpectedType { offset, found, .. }) => {
            assert_eq!((offset, found), (152, 99));
        }
        other => panic!("expected UnexpectedType, got {other:?}"),
    }
    let cut = &official(false)[..200];
    let err = parse_mat(cut).unwrap_err();
    assert!(
        matches!(err, MatError::Truncated { offset: 136, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("byte 136"), "{err}");
}

#[test]
fn truncated_or_garbled_input_never_panics() {
    for compress in [false, true] {
        let full = official(compress);
        let expected = parse_mat(&full).unwrap();
        for cut in 0..full.len() {
            // Either an error or fewer variables: a cut file never reads as the whole file.
            if let Ok(vars) = parse_mat(&full[..cut]) {
                assert_ne!(vars, expected, "cut at {cut} read as complete");
            }
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for i in HEADER_LEN..full.len() {
            let mut bytes = full.clone();
            bytes[i] ^= rng.random_range(1..=255u8);
            let _ = parse_mat(&bytes);
        }
        for _ in 0..200 {
            let mut bytes = header();
            let n = rng.random_range(0..400);
            bytes.extend((0..n).map(|_| rng.random::<u8>()));
            let _ = parse_mat(&bytes);
        }
    }
}

#[test]
fn real_stanford_lists_when_present() {
    let lists = Path::new(crate::engine::data::SHARED_DATA).join("stanford-dogs/lists");
    if !lists.join("train_list.mat").is_file() {
        eprintln!("skipping: {} is absent", lists.display());
        return;
    }
    for (file, n) in [
        ("train_list.mat", 12_000),
        ("test_list.mat", 8_580),
        ("file_list.mat", 20_580),
    ] {
        let vars = read_mat(&lists.join(file)).unwrap();
        let files = vars["file_list"].as_strings().unwrap();
        let annotations = vars["annotation_list"].as_strings().unwrap();
        let labels = vars["labels"].as_f64().unwrap();
        assert_eq!(
            (files.len(), annotations.len(), labels.len()),
            (n, n, n),
            "{file}"
        );
        assert!(labels
            .iter()
            .all(|&l| l.fract() == 0.0 && (1.0..=120.0).contains(&l)));
        assert!(files[0].starts_with("n02085620-Chihuahua/"), "{}", files[0]);
        assert!(files
            .iter()
            .zip(&annotations)
            .all(|(f, a)| f.trim_end_matches(".jpg") == a));
        if file == "train_list.mat" {
            assert_eq!(files[0], "n02085620-Chihuahua/n02085620_10074.jpg");
            let mut counts = [0usize; 120];
            labels.iter().for_each(|&l| counts[l as usize - 1] += 1);
            assert!(counts.iter().all(|&c| c == 100), "100 per breed");
        }
    }
}
