//! The gallery in memory: vectors with ids, breeds and metadata, and an HNSW graph over
//! them, encoded to and decoded from a snapshot file.
//!
//! The vectors are the source of truth; the graph (`hnsw_rs`, which cannot delete) is
//! built from them, or reloaded from its dump beside the snapshot. Deleted rows stay as
//! tombstones, skipped by searches through the graph's filter, until they reach a quarter
//! of the rows and the graph is rebuilt without them. A breed filter is answered by an
//! exact scan of that breed's vectors, which is both exact and cheap.
//!
//! A snapshot (`gallery.bin`) is an 8-byte little-endian length, that many bytes of JSON
//! (dim, model, every row's item, the tombstones, the first log segment it does not
//! contain, the graph dump's name), then the rows' vectors as little-endian f32.

use super::{same_breed, GalleryError, Hit, Item};
use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;
use serde::{Deserialize, Serialize};
use simsiam::files::FileError;
use simsiam::vector::dot;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The snapshot's file name in the gallery directory.
pub const FILE: &str = "gallery.bin";

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

#[derive(Serialize, Deserialize)]
struct Header {
    dim: usize,
    /// The model that made the vectors (files written before it was recorded have none).
    #[serde(default)]
    model: Option<String>,
    /// Every row, tombstones included (older files hold live rows only).
    items: Vec<Item>,
    /// Rows deleted since the graph was built.
    #[serde(default)]
    dead: Vec<usize>,
    /// The first log segment whose records the snapshot does not contain.
    #[serde(default)]
    log_segment: u64,
    /// The basename of the graph's dump beside it (`<name>.hnsw.graph`, `.hnsw.data`).
    #[serde(default)]
    graph: Option<String>,
    /// The graph code that wrote the dump (`GRAPH_FORMAT`); 0 for files from before it was
    /// recorded.
    #[serde(default)]
    graph_format: u32,
}

/// The version of the graph a dump holds. 1: built by the patched hnsw_rs
/// (`crates/hnsw_rs/PATCHES.md`). A dump of another version is never reloaded, since its
/// links were chosen by other rules: the graph is rebuilt from the snapshot's vectors.
pub const GRAPH_FORMAT: u32 = 1;

/// From this many rows on, a graph is built by parallel insertion (seeding, reloading without
/// a usable dump, compaction); single adds are inserted one at a time.
const PARALLEL_BUILD_FROM: usize = 256;

/// A snapshot read back: the gallery, and where its log continues.
pub struct Loaded {
    pub gallery: MemoryGallery,
    pub log_segment: u64,
    /// The name of the graph dump it was reloaded from; `None` when it was rebuilt.
    pub graph: Option<String>,
}

pub struct MemoryGallery {
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

impl MemoryGallery {
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
            g.record(item, v);
        }
        g.index_rows();
        g
    }

    /// Inserts every row into the (empty) graph, tombstones included, so that the graph
    /// holds one point per row as `reload_graph` checks: in parallel on all cores from
    /// `PARALLEL_BUILD_FROM` rows on, one by one below.
    fn index_rows(&self) {
        let rows: Vec<(&[f32], usize)> = (0..self.items.len()).map(|i| (self.row(i), i)).collect();
        if rows.len() < PARALLEL_BUILD_FROM {
            rows.into_iter().for_each(|r| self.graph.insert_slice(r));
        } else {
            self.graph.parallel_insert_slice(&rows);
        }
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
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for &i in self.by_id.values() {
            *out.entry(self.items[i].breed.clone().unwrap_or_default())
                .or_insert(0) += 1;
        }
        out
    }

    /// An error unless `vector` has the gallery's width.
    pub fn check_dim(&self, vector: &[f32]) -> Result<(), GalleryError> {
        if vector.len() != self.dim {
            return Err(GalleryError::Dimension {
                expected: self.dim,
                found: vector.len(),
            });
        }
        Ok(())
    }

    /// Whether a live entry has this id.
    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Adds an entry, replacing any live entry with the same id.
    pub fn upsert(&mut self, item: Item, vector: &[f32]) -> Result<(), GalleryError> {
        self.check_dim(vector)?;
        self.remove(&item.id);
        self.push(item, vector);
        Ok(())
    }

    fn push(&mut self, item: Item, vector: &[f32]) {
        let idx = self.record(item, vector);
        self.graph.insert_slice((vector, idx));
    }

    /// Adds a row (a live entry with the same id becomes a tombstone) but not to the graph;
    /// returns its index.
    fn record(&mut self, item: Item, vector: &[f32]) -> usize {
        if let Some(old) = self.by_id.get(&item.id).copied() {
            self.alive[old] = false;
        }
        let idx = self.items.len();
        self.by_id.insert(item.id.clone(), idx);
        self.items.push(item);
        self.vectors.extend_from_slice(vector);
        self.alive.push(true);
        idx
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

    /// The snapshot's bytes: every row (tombstones marked), where the log continues
    /// (`log_segment`) and the name of the graph's dump, if one was written beside it.
    pub fn encode(&self, log_segment: u64, graph: Option<&str>) -> Result<Vec<u8>, GalleryError> {
        let header = serde_json::to_vec(&Header {
            dim: self.dim,
            model: Some(self.model.clone()),
            items: self.items.clone(),
            dead: (0..self.items.len()).filter(|&i| !self.alive[i]).collect(),
            log_segment,
            graph: graph.map(str::to_string),
            graph_format: GRAPH_FORMAT,
        })
        .map_err(|e| GalleryError::Corrupt {
            path: PathBuf::from(FILE),
            message: e.to_string(),
        })?;
        let mut bytes = Vec::with_capacity(8 + header.len() + self.vectors.len() * 4);
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        for v in &self.vectors {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Ok(bytes)
    }

    /// Dumps the graph as `dir/<basename>.hnsw.{graph,data}`, fsynced; the name used
    /// comes back (`hnsw_rs` picks another one rather than overwrite). An empty graph has
    /// nothing to dump (`hnsw_rs` refuses to): `None`.
    pub fn dump_graph(&self, dir: &Path, basename: &str) -> Result<Option<String>, GalleryError> {
        if self.items.is_empty() {
            return Ok(None);
        }
        // hnsw_rs panics when it cannot create a dump file, and returns other I/O
        // failures (a full disk among them) as anyhow errors.
        let dumped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.graph.file_dump(dir, basename)
        }));
        let failed = |message: String| GalleryError::Corrupt {
            path: dir.join(basename),
            message: format!("dumping the graph: {message}"),
        };
        let name = match dumped {
            Ok(Ok(name)) => name,
            Ok(Err(e)) => {
                return Err(match e.downcast::<std::io::Error>() {
                    Ok(source) => FileError::at(&dir.join(basename))(source).into(),
                    Err(e) => failed(e.to_string()),
                })
            }
            Err(_) => return Err(failed("the dump files could not be created".into())),
        };
        for file in graph_files(dir, &name) {
            let synced = std::fs::File::open(&file).and_then(|f| f.sync_all());
            synced.map_err(FileError::at(&file))?;
        }
        Ok(Some(name))
    }

    /// Reads `dir/gallery.bin`; `None` when there is none. The graph is reloaded from its
    /// dump when the snapshot names one that is intact and matches the rows, else rebuilt.
    pub fn load(dir: &Path, params: GraphParams) -> Result<Option<Loaded>, GalleryError> {
        let Some((header, vectors)) = read_snapshot(&dir.join(FILE))? else {
            return Ok(None);
        };
        let graph = match header.graph.as_deref() {
            Some(name) if header.graph_format != GRAPH_FORMAT => {
                log::warn!(
                    "gallery graph {name} was written in graph format {} (this server writes {GRAPH_FORMAT}): rebuilding it",
                    header.graph_format
                );
                None
            }
            Some(name) => reload_graph(dir, name, header.items.len()),
            None => None,
        };
        let graph_name = header.graph.clone().filter(|_| graph.is_some());
        let log_segment = header.log_segment;
        let gallery = match graph {
            Some(graph) => Self::with_graph(header, vectors, graph, params),
            None => Self::rebuilt(header, vectors, params),
        };
        Ok(Some(Loaded {
            gallery,
            log_segment,
            graph: graph_name,
        }))
    }

    /// The snapshot's rows as they were, tombstones included, over its reloaded graph.
    fn with_graph(
        header: Header,
        vectors: Vec<f32>,
        graph: Hnsw<'static, f32, UnitCosine>,
        params: GraphParams,
    ) -> Self {
        let mut alive = vec![true; header.items.len()];
        for &i in &header.dead {
            alive[i] = false;
        }
        let by_id = header
            .items
            .iter()
            .enumerate()
            .filter(|&(i, _)| alive[i])
            .map(|(i, item)| (item.id.clone(), i))
            .collect();
        Self {
            dim: header.dim,
            model: header.model.unwrap_or_default(),
            by_id,
            alive,
            items: header.items,
            vectors,
            graph,
            params,
        }
    }

    /// The snapshot's live rows, with a graph built anew.
    fn rebuilt(header: Header, vectors: Vec<f32>, params: GraphParams) -> Self {
        let mut alive = vec![true; header.items.len()];
        for &i in &header.dead {
            alive[i] = false;
        }
        let (items, rows): (Vec<Item>, Vec<&[f32]>) = header
            .items
            .into_iter()
            .zip(vectors.chunks_exact(header.dim.max(1)))
            .zip(alive)
            .filter_map(|(row, alive)| alive.then_some(row))
            .unzip();
        let model = header.model.unwrap_or_default();
        Self::from_parts(header.dim, &model, items, rows.concat(), params)
    }
}

/// A snapshot's header and vectors, checked against each other; `None` when there is no
/// file.
fn read_snapshot(path: &Path) -> Result<Option<(Header, Vec<f32>)>, GalleryError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(FileError::at(path)(source).into()),
    };
    let corrupt = |message: String| GalleryError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .ok_or_else(|| corrupt("shorter than its header".into()))?;
    let header_bytes = bytes
        .get(8..8usize.saturating_add(len))
        .ok_or_else(|| corrupt("header length exceeds the file".into()))?;
    let header: Header =
        serde_json::from_slice(header_bytes).map_err(|e| corrupt(format!("bad header: {e}")))?;
    let body = &bytes[8 + len..];
    if body.len() != header.items.len() * header.dim * 4 {
        return Err(corrupt(format!(
            "expected {} vectors of {} floats",
            header.items.len(),
            header.dim
        )));
    }
    if header.dead.iter().any(|&i| i >= header.items.len()) {
        return Err(corrupt("a tombstone beyond the rows".into()));
    }
    let vectors = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Some((header, vectors)))
}

/// The two files of a graph dump.
pub fn graph_files(dir: &Path, basename: &str) -> [PathBuf; 2] {
    [
        dir.join(format!("{basename}.hnsw.graph")),
        dir.join(format!("{basename}.hnsw.data")),
    ]
}

/// The graph from its dump, if the files are there, intact, and hold `rows` points.
/// `hnsw_rs` asserts on a damaged file rather than returning an error, so its panic is
/// caught here and the caller rebuilds the graph from the vectors instead.
fn reload_graph(dir: &Path, name: &str, rows: usize) -> Option<Hnsw<'static, f32, UnitCosine>> {
    if !graph_files(dir, name).iter().all(|f| f.is_file()) {
        log::warn!("gallery graph {name} is missing: rebuilding it");
        return None;
    }
    let loaded = std::panic::catch_unwind(|| {
        // The reloaded graph owns its points (no memory map), but its type borrows the
        // loader: the loader is leaked, a few hundred bytes once per start.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, name)));
        io.load_hnsw::<f32, UnitCosine>()
    });
    match loaded {
        Ok(Ok(graph)) if graph.get_nb_point() == rows => Some(graph),
        Ok(Ok(graph)) => {
            log::warn!(
                "gallery graph {name} holds {} points for {rows} rows: rebuilding it",
                graph.get_nb_point()
            );
            None
        }
        Ok(Err(e)) => {
            log::warn!("gallery graph {name} did not load ({e}): rebuilding it");
            None
        }
        Err(_) => {
            log::warn!("gallery graph {name} is damaged: rebuilding it");
            None
        }
    }
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

    fn gallery(n: usize, dim: usize) -> MemoryGallery {
        let mut g = MemoryGallery::new(dim, "test-model", P);
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
        // Upsert replaces (with a vector no other entry has: img-99 holds unit(99), and
        // a tie at k = 1 may be answered either way).
        g.upsert(item(3), &unit(1000, 16)).expect("upsert");
        assert_eq!(g.len(), 59);
        assert_eq!(
            g.search(&unit(1000, 16), 1, None).expect("search")[0].id,
            "img-3"
        );
    }

    fn save(g: &MemoryGallery, dir: &Path, graph: Option<&str>) {
        let name = graph.and_then(|n| g.dump_graph(dir, n).expect("dump"));
        let bytes = g.encode(3, name.as_deref()).expect("encode");
        simsiam::files::write_atomic(&dir.join(FILE), &bytes).expect("write");
    }

    #[test]
    fn save_and_load_round_trip_and_corruption_is_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut g = gallery(30, 8);
        g.remove("img-0");
        save(&g, dir.path(), None);
        let back = MemoryGallery::load(dir.path(), P)
            .expect("load")
            .expect("present");
        assert_eq!(back.log_segment, 3);
        assert_eq!(back.graph, None, "no dump: rebuilt");
        let back = back.gallery;
        assert_eq!(back.len(), 29);
        assert_eq!(back.counts(), g.counts());
        assert_eq!(back.model(), "test-model", "the file records the model");
        assert!(!back.contains("img-0"), "the tombstone stays dead");
        assert_eq!(
            back.search(&unit(5, 8), 1, None).expect("s")[0].metadata,
            serde_json::json!({"i": 5})
        );
        assert!(MemoryGallery::load(&dir.path().join("none"), P)
            .expect("ok")
            .is_none());
        let path = dir.path().join(FILE);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        let err = MemoryGallery::load(dir.path(), P).err().expect("corrupt");
        assert!(err.to_string().contains("expected 30 vectors"), "{err}");
    }

    #[test]
    fn a_graph_dumped_by_the_unpatched_hnsw_rs_is_rebuilt_not_reloaded() {
        let dir = tempfile::tempdir().expect("tmp");
        let g = gallery(300, 16);
        save(&g, dir.path(), Some("graph-1"));
        // The snapshot as the server wrote it before graph formats: no `graph_format`.
        let path = dir.path().join(FILE);
        let bytes = std::fs::read(&path).expect("read");
        let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let mut header: serde_json::Value =
            serde_json::from_slice(&bytes[8..8 + len]).expect("header");
        assert_eq!(header["graph_format"], GRAPH_FORMAT, "written today");
        header
            .as_object_mut()
            .expect("object")
            .remove("graph_format");
        let header = serde_json::to_vec(&header).expect("json");
        let mut old = (header.len() as u64).to_le_bytes().to_vec();
        old.extend_from_slice(&header);
        old.extend_from_slice(&bytes[8 + len..]);
        std::fs::write(&path, old).expect("write");

        let back = MemoryGallery::load(dir.path(), P)
            .expect("load")
            .expect("present");
        assert_eq!(back.graph, None, "rebuilt, not reloaded");
        assert_eq!(back.gallery.len(), 300);
        let hits = back.gallery.search(&unit(42, 16), 1, None).expect("s");
        assert_eq!(hits[0].id, "img-42");
    }

    #[test]
    fn a_bulk_build_is_parallel_and_every_row_finds_itself() {
        let n = 3 * PARALLEL_BUILD_FROM;
        let items: Vec<Item> = (0..n).map(item).collect();
        let vectors: Vec<f32> = (0..n).flat_map(|i| unit(i as u64, 16)).collect();
        let g = MemoryGallery::from_parts(16, "test-model", items, vectors, P);
        assert_eq!(g.graph.get_nb_point(), n, "one graph point per row");
        for i in 0..n {
            let hits = g.search(&unit(i as u64, 16), 1, None).expect("search");
            assert_eq!(hits[0].id, format!("img-{i}"));
        }
    }

    #[test]
    fn a_dumped_graph_is_reloaded_and_keeps_working_and_a_damaged_one_is_rebuilt() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut g = gallery(300, 16);
        g.remove("img-9");
        save(&g, dir.path(), Some("graph-1"));
        let back = MemoryGallery::load(dir.path(), P)
            .expect("load")
            .expect("present");
        assert_eq!(back.graph.as_deref(), Some("graph-1"));
        let mut back = back.gallery;
        for q in [1u64, 9, 77, 500] {
            let ids = |g: &MemoryGallery| -> Vec<String> {
                let hits = g.search(&unit(q, 16), 5, None).expect("search");
                hits.into_iter().map(|h| h.id).collect()
            };
            assert_eq!(ids(&back), ids(&g), "query {q}: same graph, same answer");
        }
        assert!(!back.contains("img-9"));
        // Inserting into the reloaded graph works like into a built one.
        back.upsert(item(1000), &unit(1000, 16)).expect("upsert");
        assert_eq!(
            back.search(&unit(1000, 16), 1, None).expect("s")[0].id,
            "img-1000"
        );

        // A truncated graph file: the graph is rebuilt from the vectors, nothing is lost.
        let [graph, _] = graph_files(dir.path(), "graph-1");
        let bytes = std::fs::read(&graph).expect("read");
        std::fs::write(&graph, &bytes[..bytes.len() / 2]).expect("write");
        let again = MemoryGallery::load(dir.path(), P)
            .expect("load")
            .expect("present");
        assert_eq!(again.graph, None);
        assert_eq!(again.gallery.len(), 299);
        assert_eq!(
            again.gallery.search(&unit(42, 16), 1, None).expect("s")[0].id,
            "img-42"
        );
    }
}
