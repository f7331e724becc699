//! Synthetic galleries shaped like real embeddings: unit vectors clustered around one
//! centre per breed (real embeddings of one breed lean together; uniform random vectors
//! in 512 dimensions would all be nearly orthogonal, the hardest case for any HNSW), plus
//! a rare breed holding 0.5% of the entries, scattered over every cluster.

use rayon::prelude::*;
use simsiam::vector::dot;
use simsiam_server::gallery::Item;

pub const BREEDS: usize = 120;
pub const RARE: &str = "rare breed";

/// A small, fast generator (xorshift*), seeded per vector so generation runs in parallel
/// and always gives the same gallery.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Roughly normal: the sum of four uniforms, centred.
    fn normal(&mut self) -> f32 {
        (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum::<f32>()
            - 2.0
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

pub struct Data {
    pub dim: usize,
    pub items: Vec<Item>,
    /// Row-major unit vectors.
    pub vectors: Vec<f32>,
    pub queries: Vec<f32>,
}

/// `n` entries and `queries` query vectors of width `dim`.
pub fn generate(n: usize, dim: usize, queries: usize) -> Data {
    let centres: Vec<Vec<f32>> = (0..BREEDS)
        .map(|b| {
            let mut r = Rng::new(1_000_003 + b as u64);
            let mut c: Vec<f32> = (0..dim).map(|_| r.normal()).collect();
            normalise(&mut c);
            c
        })
        .collect();
    // `normal()` has a standard deviation of 1/√3; noise of 3/√dim times it has a norm of
    // √3, which puts a vector at cosine 0.5 from its centre (two of one breed at ~0.25,
    // of two breeds at ~0).
    let sigma = 3.0 / (dim as f32).sqrt();
    let vector = |seed: u64| -> (usize, Vec<f32>) {
        let mut r = Rng::new(seed);
        let breed = (r.next() % BREEDS as u64) as usize;
        let mut v: Vec<f32> = centres[breed]
            .iter()
            .map(|c| c + sigma * r.normal())
            .collect();
        normalise(&mut v);
        (breed, v)
    };
    let rows: Vec<(usize, Vec<f32>)> = (0..n as u64).into_par_iter().map(vector).collect();
    let rare_every = 200;
    let items = rows
        .iter()
        .enumerate()
        .map(|(i, (breed, _))| Item {
            id: format!("img-{i}"),
            breed: Some(if i % rare_every == 7 {
                RARE.to_string()
            } else {
                format!("breed {breed}")
            }),
            source: Some(format!("synthetic/{i}.jpg")),
            metadata: serde_json::Value::Null,
        })
        .collect();
    let vectors = rows.into_iter().flat_map(|(_, v)| v).collect();
    let queries = (0..queries as u64)
        .into_par_iter()
        .flat_map(|q| vector(u64::MAX / 2 + q).1)
        .collect();
    Data {
        dim,
        items,
        vectors,
        queries,
    }
}

/// The exact `k` nearest rows to each query (by dot product), among rows `keep` accepts.
pub fn exact(data: &Data, k: usize, keep: impl Fn(usize) -> bool + Sync) -> Vec<Vec<String>> {
    data.queries
        .par_chunks(data.dim)
        .map(|q| {
            let mut scored: Vec<(f32, usize)> = data
                .vectors
                .chunks(data.dim)
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(i, v)| (dot(v, q), i))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            scored
                .into_iter()
                .take(k)
                .map(|(_, i)| data.items[i].id.clone())
                .collect()
        })
        .collect()
}
