//! The searchable gallery: stored vectors with ids, breeds and metadata, an HNSW graph
//! over them, and a file that survives restarts.
//!
//! The vectors are the source of truth; the graph (`hnsw_rs`, which cannot delete) is
//! rebuilt from them at start-up and whenever deleted entries (tombstones) pile up.
//! Searches skip tombstones through the graph's filter, and a breed filter is answered by
//! an exact scan of that breed's vectors, which is both exact and cheap.
//!
//! On disk the gallery is one file, `gallery.bin`: an 8-byte little-endian length, that
//! many bytes of JSON (dim, items), then the vectors as little-endian f32. It is replaced
//! atomically (temporary file, fsync, rename) after every change.

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;
use serde::{Deserialize, Serialize};
use simsiam::bundle::{write_atomic, BundleError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const FILE: &str = "gallery.bin";

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    Io(#[from] BundleError),
    #[error("vector has {found} values, the gallery holds {expected}-d vectors")]
    Dimension { expected: usize, found: usize },
}

/// One gallery entry as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    /// The breed (or any label the client gave); `label` is accepted as an alias.
    #[serde(alias = "label")]
    pub breed: Option<String>,
    /// Where the image came from (a dataset path, a URL): returned with search hits.
    pub source: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub id: String,
    pub breed: Option<String>,
    /// Cosine similarity, 1 = identical direction.
    pub score: f32,
    pub source: Option<String>,
    pub metadata: serde_json::Value,
}

/// HNSW parameters.
#[derive(Clone, Copy, Debug)]
pub struct GraphParams {
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

/// 1 − dot product: the cosine distance of unit vectors. `hnsw_rs`'s own `DistDot`
/// asserts `dot <= 1`, which rounding breaks for a vector and itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// Breed names match ignoring case and `_` versus space (`Japanese_spaniel` = `japanese spaniel`).
fn same_breed(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.chars().zip(b.chars()).all(|(x, y)| {
            let norm = |c: char| {
                if c == '_' {
                    ' '
                } else {
                    c.to_ascii_lowercase()
                }
            };
            norm(x) == norm(y)
        })
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[derive(Serialize, Deserialize)]
struct Header {
    dim: usize,
    /// The model that made the vectors (files written before it was recorded have none).
    #[serde(default)]
    model: Option<String>,
    items: Vec<Item>,
}

pub struct Gallery {
    dim: usize,
    /// The model whose embeddings the vectors are (see `AppState::model_key`).
    model: String,
    items: Vec<Item>,
    vectors: Vec<f32>,
    alive: Vec<bool>,
    by_id: HashMap<String, usize>,
    graph: Hnsw<'static, f32, UnitCosine>,
    params: GraphParams,
}

impl Gallery {
    pub fn new(dim: usize, model: &str, params: GraphParams) -> Self {
        Self::from_parts(dim, model, Vec::new(), Vec::new(), params)
    }

    /// A gallery over `items` and their row-major `vectors` (later duplicates of an id
    /// win), embedded by `model`.
    pub fn from_parts(
        dim: usize,
        model: &str,
        items: Vec<Item>,
        vectors: Vec<f32>,
        params: GraphParams,
    ) -> Self {
        let mut g = Self {
            dim,
            model: model.to_string(),
            items: Vec::new(),
            vectors: Vec::new(),
            alive: Vec::new(),
            by_id: HashMap::new(),
            graph: new_graph(params, items.len()),
            params,
        };
        for (item, v) in items.into_iter().zip(vectors.chunks_exact(dim.max(1))) {
            g.push(item, v);
        }
        g
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The model that made the vectors; empty for a file from before it was recorded.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Live entries per label (entries without one count under `""`).
    pub fn counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for &i in self.by_id.values() {
            *out.entry(self.items[i].breed.clone().unwrap_or_default())
                .or_insert(0) += 1;
        }
        out
    }

    /// Adds an entry, replacing any live entry with the same id.
    pub fn upsert(&mut self, item: Item, vector: &[f32]) -> Result<(), GalleryError> {
        if vector.len() != self.dim {
            return Err(GalleryError::Dimension {
                expected: self.dim,
                found: vector.len(),
            });
        }
        self.remove(&item.id);
        self.push(item, vector);
        Ok(())
    }

    fn push(&mut self, item: Item, vector: &[f32]) {
        if let Some(old) = self.by_id.get(&item.id).copied() {
            self.alive[old] = false;
        }
        let idx = self.items.len();
        self.by_id.insert(item.id.clone(), idx);
        self.items.push(item);
        self.vectors.extend_from_slice(vector);
        self.alive.push(true);
        self.graph.insert_slice((vector, idx));
    }

    /// Removes an entry; false when there was none. Rebuilds the graph once a quarter of
    /// its nodes are tombstones, so they never dominate searches.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(idx) = self.by_id.remove(id) else {
            return false;
        };
        self.alive[idx] = false;
        let dead = self.items.len() - self.by_id.len();
        if dead > 16 && dead * 4 > self.items.len() {
            self.compact();
        }
        true
    }

    /// Drops tombstones and rebuilds the graph from the live vectors.
    fn compact(&mut self) {
        let (items, vectors) = self.live_parts();
        *self = Self::from_parts(self.dim, &self.model, items, vectors, self.params);
    }

    fn live_parts(&self) -> (Vec<Item>, Vec<f32>) {
        let mut items = Vec::with_capacity(self.len());
        let mut vectors = Vec::with_capacity(self.len() * self.dim);
        for (i, item) in self.items.iter().enumerate() {
            if self.alive[i] {
                items.push(item.clone());
                vectors.extend_from_slice(self.row(i));
            }
        }
        (items, vectors)
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    /// The `k` nearest live entries to a unit vector, best first, optionally only those
    /// labelled `label`.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        label: Option<&str>,
    ) -> Result<Vec<Hit>, GalleryError> {
        if query.len() != self.dim {
            return Err(GalleryError::Dimension {
                expected: self.dim,
                found: query.len(),
            });
        }
        let mut scored: Vec<(usize, f32)> = match label {
            Some(l) => (0..self.items.len())
                .filter(|&i| {
                    self.alive[i]
                        && self.items[i]
                            .breed
                            .as_deref()
                            .is_some_and(|b| same_breed(b, l))
                })
                .map(|i| (i, dot(query, self.row(i))))
                .collect(),
            None => {
                let alive = |id: &usize| self.alive.get(*id).copied().unwrap_or(false);
                let ef = self.params.ef_search.max(k);
                self.graph
                    .search_filter(query, k, ef, Some(&alive))
                    .into_iter()
                    .map(|n| (n.d_id, dot(query, self.row(n.d_id))))
                    .collect()
            }
        };
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.truncate(k);
        Ok(scored
            .into_iter()
            .map(|(i, score)| {
                let item = &self.items[i];
                Hit {
                    id: item.id.clone(),
                    breed: item.breed.clone(),
                    score,
                    source: item.source.clone(),
                    metadata: item.metadata.clone(),
                }
            })
            .collect())
    }

    /// Writes the live entries to `dir/gallery.bin` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), GalleryError> {
        write_file(dir, &self.snapshot()?)
    }

    /// The bytes of `gallery.bin` for the live entries: an 8-byte header length, the JSON
    /// header (dimension, model, items), then the vectors as little-endian f32.
    pub fn snapshot(&self) -> Result<Vec<u8>, GalleryError> {
        let (items, vectors) = self.live_parts();
        let header = serde_json::to_vec(&Header {
            dim: self.dim,
            model: Some(self.model.clone()),
            items,
        })
        .map_err(|e| GalleryError::Corrupt {
            path: PathBuf::from(FILE),
            message: e.to_string(),
        })?;
        let mut bytes = Vec::with_capacity(8 + header.len() + vectors.len() * 4);
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        for v in vectors {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Ok(bytes)
    }

    /// Reads `dir/gallery.bin`; `None` when the file does not exist yet.
    pub fn load(dir: &Path, params: GraphParams) -> Result<Option<Self>, GalleryError> {
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BundleError::Io { path, source }.into()),
        };
        let corrupt = |message: String| GalleryError::Corrupt {
            path: path.clone(),
            message,
        };
        let len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
            .ok_or_else(|| corrupt("shorter than its header".into()))?;
        let header_bytes = bytes
            .get(8..8usize.saturating_add(len))
            .ok_or_else(|| corrupt("header length exceeds the file".into()))?;
        let header: Header = serde_json::from_slice(header_bytes)
            .map_err(|e| corrupt(format!("bad header: {e}")))?;
        let body = &bytes[8 + len..];
        if body.len() != header.items.len() * header.dim * 4 {
            return Err(corrupt(format!(
                "expected {} vectors of {} floats",
                header.items.len(),
                header.dim
            )));
        }
        let vectors = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Some(Self::from_parts(
            header.dim,
            header.model.as_deref().unwrap_or_default(),
            header.items,
            vectors,
            params,
        )))
    }
}

/// Replaces `dir/gallery.bin` with `snapshot` atomically (temporary file, fsync, rename).
pub fn write_file(dir: &Path, snapshot: &[u8]) -> Result<(), GalleryError> {
    std::fs::create_dir_all(dir).map_err(|source| BundleError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_atomic(&dir.join(FILE), snapshot)?;
    Ok(())
}

fn new_graph(p: GraphParams, capacity: usize) -> Hnsw<'static, f32, UnitCosine> {
    let layers = 16;
    Hnsw::new(
        p.m,
        capacity.max(1024),
        layers,
        p.ef_construction,
        UnitCosine,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: GraphParams = GraphParams {
        m: 16,
        ef_construction: 100,
        ef_search: 64,
    };

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.into_iter().map(|a| a / n).collect()
    }

    fn item(i: usize) -> Item {
        Item {
            id: format!("img-{i}"),
            breed: Some(if i.is_multiple_of(2) { "even" } else { "odd" }.into()),
            source: Some(format!("src/{i}.jpg")),
            metadata: serde_json::json!({ "i": i }),
        }
    }

    fn gallery(n: usize, dim: usize) -> Gallery {
        let mut g = Gallery::new(dim, "test-model", P);
        for i in 0..n {
            g.upsert(item(i), &unit(i as u64, dim)).expect("upsert");
        }
        g
    }

    #[test]
    fn hnsw_finds_the_same_neighbours_as_an_exact_scan() {
        let dim = 32;
        let g = gallery(500, dim);
        let mut agree = 0;
        for q in 1000..1050u64 {
            let query = unit(q, dim);
            let hits = g.search(&query, 5, None).expect("search");
            let mut exact: Vec<(usize, f32)> = (0..500)
                .map(|i| (i, dot(&query, &unit(i as u64, dim))))
                .collect();
            exact.sort_by(|a, b| b.1.total_cmp(&a.1));
            agree += hits
                .iter()
                .filter(|h| exact[..5].iter().any(|(i, _)| h.id == format!("img-{i}")))
                .count();
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        }
        assert!(agree >= 240, "recall@5 {agree}/250");
    }

    #[test]
    fn an_image_finds_itself_first_and_label_filters_are_exact() {
        let g = gallery(200, 16);
        let hits = g.search(&unit(42, 16), 3, None).expect("search");
        assert_eq!(hits[0].id, "img-42");
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        assert_eq!(hits[0].source.as_deref(), Some("src/42.jpg"));
        let odd = g.search(&unit(42, 16), 10, Some("ODD")).expect("search");
        assert_eq!(odd.len(), 10);
        assert!(odd.iter().all(|h| h.breed.as_deref() == Some("odd")));
        assert!(g
            .search(&unit(1, 16), 3, Some("no such breed"))
            .expect("search")
            .is_empty());
        assert!(matches!(
            g.search(&[1.0], 3, None),
            Err(GalleryError::Dimension { .. })
        ));
    }

    #[test]
    fn removed_items_never_come_back_and_compaction_keeps_the_rest() {
        let mut g = gallery(100, 16);
        assert!(g.remove("img-7"));
        assert!(!g.remove("img-7"));
        let hits = g.search(&unit(7, 16), 100, None).expect("search");
        assert!(hits.iter().all(|h| h.id != "img-7"));
        for i in 0..40 {
            g.remove(&format!("img-{}", 50 + i));
        }
        assert_eq!(g.len(), 59);
        assert!(g.items.len() < 100, "tombstones were compacted away");
        assert!(
            (g.items.len() - g.len()) * 4 <= g.items.len(),
            "at most a quarter tombstones"
        );
        let hits = g.search(&unit(3, 16), 1, None).expect("search");
        assert_eq!(hits[0].id, "img-3");
        // Upsert replaces.
        g.upsert(item(3), &unit(99, 16)).expect("upsert");
        assert_eq!(g.len(), 59);
        assert_eq!(
            g.search(&unit(99, 16), 1, None).expect("search")[0].id,
            "img-3"
        );
    }

    #[test]
    fn save_and_load_round_trip_and_corruption_is_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut g = gallery(30, 8);
        g.remove("img-0");
        g.save(dir.path()).expect("save");
        let back = Gallery::load(dir.path(), P)
            .expect("load")
            .expect("present");
        assert_eq!(back.len(), 29);
        assert_eq!(back.counts(), g.counts());
        assert_eq!(back.model(), "test-model", "the file records the model");
        assert_eq!(
            back.search(&unit(5, 8), 1, None).expect("s")[0].metadata,
            serde_json::json!({"i": 5})
        );
        assert!(Gallery::load(&dir.path().join("none"), P)
            .expect("ok")
            .is_none());
        let path = dir.path().join(FILE);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        let err = Gallery::load(dir.path(), P).err().expect("corrupt");
        assert!(err.to_string().contains("expected 29 vectors"), "{err}");
    }
}
