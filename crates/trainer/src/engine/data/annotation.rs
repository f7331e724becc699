//! PASCAL-VOC annotation files, as shipped in Stanford Dogs' `Annotation/` folder.
//!
//! Each image has one XML file (no extension) with the image `size` and one `object` per dog,
//! each with a `bndbox`. Cropping to the first dog's box is the classic fine-grained setup, so
//! the loader only needs the size and the boxes; everything else in the file is ignored.

use super::{BBox, DataError};
use quick_xml::events::Event;
use quick_xml::Reader;
use std::path::Path;

/// One annotated object (a dog).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotatedObject {
    /// The breed name as written in the file (e.g. `Chihuahua`).
    pub name: String,
    pub bbox: BBox,
}

/// The parts of an annotation file the loader uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    /// `(width, height)` of the original image, when the file states it.
    pub size: Option<(u32, u32)>,
    /// The objects in file order.
    pub objects: Vec<AnnotatedObject>,
}

/// Why an annotation could not be parsed (the caller adds the path).
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    #[error("invalid XML: {0}")]
    Xml(String),
    #[error("object {index} has no <{field}> in its <bndbox>")]
    MissingCoordinate { index: usize, field: &'static str },
    #[error("<{field}> is {value:?}, not a non-negative number")]
    BadNumber { field: String, value: String },
}

/// Parses VOC XML text.
///
/// Coordinates are accepted as integers or decimals (some VOC tools write `108.0`); decimals
/// are rounded, since boxes are used as pixel crops.
pub fn parse_annotation(xml: &str) -> Result<Annotation, AnnotationError> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut p = Parsed::default();
    loop {
        let event = reader.read_event().map_err(|e| {
            AnnotationError::Xml(format!("{e} at byte {}", reader.error_position()))
        })?;
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_string();
                if name == "object" {
                    p.current = Some(PartialObject::default());
                }
                p.stack.push(name);
            }
            Event::End(_) => {
                let object = match p.stack.pop().as_deref() {
                    Some("object") => p.current.take(),
                    _ => None,
                };
                if let Some(object) = object {
                    p.objects.push(object.finish(p.objects.len())?);
                }
            }
            Event::Text(t) => p.text(t.xml10_content().trim())?,
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(open) = p.stack.last() {
        return Err(AnnotationError::Xml(format!("<{open}> is never closed")));
    }
    let size = match p.size {
        (Some(w), Some(h)) => Some((w, h)),
        _ => None,
    };
    Ok(Annotation {
        size,
        objects: p.objects,
    })
}

/// What the parser has read so far.
#[derive(Default)]
struct Parsed {
    /// Element names from the root to the current element.
    stack: Vec<String>,
    size: (Option<u32>, Option<u32>),
    objects: Vec<AnnotatedObject>,
    current: Option<PartialObject>,
}

impl Parsed {
    /// Text inside the current element: the image size, an object's name or a box
    /// coordinate, by where it stands; anything else is ignored.
    fn text(&mut self, text: &str) -> Result<(), AnnotationError> {
        let path: Vec<&str> = self.stack.iter().map(String::as_str).collect();
        match path.as_slice() {
            [.., "size", "width"] => self.size.0 = Some(number(text, "width")?),
            [.., "size", "height"] => self.size.1 = Some(number(text, "height")?),
            [.., "object", "name"] => {
                if let Some(o) = self.current.as_mut() {
                    o.name.push_str(text);
                }
            }
            [.., "bndbox", field @ ("xmin" | "ymin" | "xmax" | "ymax")] => {
                let value = number(text, field)?;
                if let Some(o) = self.current.as_mut() {
                    o.set(field, value);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads and parses an annotation file.
pub fn read_annotation(path: &Path) -> Result<Annotation, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // The Stanford files are ASCII; a stray non-UTF-8 byte in a name must not lose the box.
    parse_annotation(&String::from_utf8_lossy(&bytes)).map_err(|source| DataError::Annotation {
        path: path.to_path_buf(),
        source,
    })
}

/// The first object's box, or `None` when the file does not exist or lists no object.
///
/// A missing file is not an error because not every user has the `Annotation/` folder; a
/// file that exists but cannot be parsed is, since it means the data is damaged.
pub fn first_bbox(path: &Path) -> Result<Option<BBox>, DataError> {
    if !path.is_file() {
        return Ok(None);
    }
    Ok(read_annotation(path)?.objects.first().map(|o| o.bbox))
}

fn number(text: &str, field: &str) -> Result<u32, AnnotationError> {
    let bad = || AnnotationError::BadNumber {
        field: field.to_string(),
        value: text.to_string(),
    };
    if let Ok(v) = text.parse::<u32>() {
        return Ok(v);
    }
    let v: f64 = text.parse().map_err(|_| bad())?;
    if v.is_finite() && v >= 0.0 && v <= f64::from(u32::MAX) {
        Ok(v.round() as u32)
    } else {
        Err(bad())
    }
}

#[derive(Default)]
struct PartialObject {
    name: String,
    coords: [Option<u32>; 4],
}

impl PartialObject {
    const FIELDS: [&'static str; 4] = ["xmin", "ymin", "xmax", "ymax"];

    fn set(&mut self, field: &str, value: u32) {
        if let Some(i) = Self::FIELDS.iter().position(|f| *f == field) {
            self.coords[i] = Some(value);
        }
    }

    fn finish(self, index: usize) -> Result<AnnotatedObject, AnnotationError> {
        let get = |i: usize| {
            self.coords[i].ok_or(AnnotationError::MissingCoordinate {
                index,
                field: Self::FIELDS[i],
            })
        };
        let bbox = BBox {
            xmin: get(0)?,
            ymin: get(1)?,
            xmax: get(2)?,
            ymax: get(3)?,
        };
        Ok(AnnotatedObject {
            name: self.name,
            bbox,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_DOGS: &str = r#"<?xml version="1.0"?>
<annotation><size><width>640</width><height>480</height><depth>3</depth></size>
  <object><name>Beagle</name><bndbox><xmin>10</xmin><ymin>20.4</ymin><xmax>300</xmax>
  <ymax>400</ymax></bndbox></object>
  <object><name>Pug</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax>
  </bndbox></object></annotation>"#;

    #[test]
    fn parses_size_and_objects_in_order() {
        let a = parse_annotation(TWO_DOGS).unwrap();
        assert_eq!(a.size, Some((640, 480)));
        assert_eq!(a.objects.len(), 2);
        assert_eq!(a.objects[0].name, "Beagle");
        let bbox = BBox {
            xmin: 10,
            ymin: 20,
            xmax: 300,
            ymax: 400,
        };
        assert_eq!(a.objects[0].bbox, bbox);
        assert_eq!(a.objects[1].bbox.xmax, 3);
    }

    #[test]
    fn rejects_broken_annotations() {
        let missing = "<annotation><object><bndbox><xmin>1</xmin></bndbox></object></annotation>";
        assert!(matches!(
            parse_annotation(missing),
            Err(AnnotationError::MissingCoordinate {
                index: 0,
                field: "ymin"
            })
        ));
        let negative = TWO_DOGS.replace("<xmin>10</xmin>", "<xmin>-5</xmin>");
        assert!(matches!(
            parse_annotation(&negative),
            Err(AnnotationError::BadNumber { .. })
        ));
        let unclosed = "<annotation><object><name>x</name>";
        assert!(parse_annotation(unclosed).is_err());
        let mismatched = "<annotation><size></annotation>";
        assert!(matches!(
            parse_annotation(mismatched),
            Err(AnnotationError::Xml(_))
        ));
    }

    #[test]
    fn missing_file_is_no_box_and_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(first_bbox(&dir.path().join("absent")).unwrap(), None);
        let damaged = dir.path().join("damaged");
        std::fs::write(&damaged, "<annotation><object><bndbox><xmin>oops").unwrap();
        let err = first_bbox(&damaged).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn real_samples_when_present() {
        let root = Path::new(crate::engine::data::SHARED_DATA).join("samples/annotation");
        if !root.is_dir() {
            eprintln!("skipping: {} is absent", root.display());
            return;
        }
        let chihuahua = root.join("n02085620-Chihuahua/n02085620_2650");
        let a = read_annotation(&chihuahua).unwrap();
        assert_eq!(a.size, Some((500, 333)));
        assert_eq!(a.objects[0].name, "Chihuahua");
        let bbox = BBox {
            xmin: 108,
            ymin: 87,
            xmax: 405,
            ymax: 303,
        };
        assert_eq!(first_bbox(&chihuahua).unwrap(), Some(bbox));
        let spaniel = root.join("n02085782-Japanese_spaniel/n02085782_23");
        let bbox = BBox {
            xmin: 73,
            ymin: 24,
            xmax: 255,
            ymax: 255,
        };
        assert_eq!(first_bbox(&spaniel).unwrap(), Some(bbox));
        assert_eq!(read_annotation(&spaniel).unwrap().size, Some((320, 379)));
    }
}
