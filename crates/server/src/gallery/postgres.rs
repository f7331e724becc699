//! The PostgreSQL gallery: one table with pgvector's HNSW index, shared by every server
//! replica that points `gallery.postgres_url` at the same database.
//!
//! The table (`gallery.postgres_table`) holds id, breed (and its `breed_key` for
//! filtering), source, metadata as `jsonb`, the embedding as `vector(dim)`, the model and
//! timestamps. A row of `simsiam_gallery_meta` per table records the schema version, the
//! model and width it was made for, the entry count and when it was seeded. Start-up takes
//! an advisory lock, creates or migrates the schema, refuses a table of another model or
//! width, and seeds it once, so replicas starting together seed it exactly once. Every
//! change is one transaction. Searches go through the HNSW index (`vector_cosine_ops`,
//! with the gallery's `m`, `ef_construction` and `ef_search`); a breed filter scans that
//! breed's rows exactly when it has at most `postgres_exact_breed_max` of them, so a rare
//! breed still gets its k results (an index scan filtered afterwards would find few).

use super::{breed_key, Counts, Gallery, GalleryError, Hit, Item, Opening};
use crate::config::GalleryConfig;
use crate::health::Health;
use crate::metrics::Metrics;
use pgvector::Vector;
use postgres::{GenericClient, NoTls, Row, Transaction};
use r2d2::{CustomizeConnection, Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Manager = PostgresConnectionManager<NoTls>;

/// The schema this server writes; a table of a newer one is refused.
const SCHEMA_VERSION: i32 = 1;
/// pgvector's HNSW index takes `vector` columns of at most this many dimensions.
pub const HNSW_MAX_DIM: usize = 2000;
/// One row per gallery table: the server's bookkeeping (schema version, model, width,
/// live entries, whether the seed went in).
const META_TABLE: &str = "CREATE TABLE IF NOT EXISTS simsiam_gallery_meta (
    table_name text PRIMARY KEY,
    schema_version int NOT NULL,
    model text NOT NULL,
    dim int NOT NULL,
    items bigint NOT NULL DEFAULT 0,
    seeded_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
)";
/// Any constant: the advisory lock every starting replica takes while it sets up.
const SETUP_LOCK: i64 = 0x5153_494d_5349_414d;
/// pgvector's largest `hnsw.ef_search`.
const MAX_EF_SEARCH: usize = 1000;

/// Migration `i` brings a table from schema version `i` to `i + 1` (`{t}`: the table,
/// `{dim}`: its width).
const MIGRATIONS: &[&str] = &["CREATE TABLE {t} (
        id text PRIMARY KEY,
        breed text,
        breed_key text,
        source text,
        metadata jsonb NOT NULL DEFAULT 'null',
        embedding vector({dim}) NOT NULL,
        model text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX {t}_breed_key ON {t} (breed_key);"];

pub struct PostgresGallery {
    pool: OffRuntime,
    table: String,
    dim: usize,
    ef_search: usize,
    exact_breed_max: usize,
    /// The count after this replica's last write or readiness check (others write too).
    last_count: AtomicUsize,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// The pool, dropped on a thread of its own. The `postgres` client blocks on a runtime of
/// its own, which tokio forbids on a thread that drives the server's runtime: closing the
/// connections there (the server's state is dropped on its main thread) would panic.
struct OffRuntime(Option<Pool<Manager>>);

impl std::ops::Deref for OffRuntime {
    type Target = Pool<Manager>;
    fn deref(&self) -> &Pool<Manager> {
        match &self.0 {
            Some(pool) => pool,
            None => unreachable!("the pool is taken only when it is dropped"),
        }
    }
}

impl Drop for OffRuntime {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

/// Every connection's session settings.
#[derive(Debug)]
struct Session {
    ef_search: usize,
    statement_timeout_ms: u64,
}

impl CustomizeConnection<postgres::Client, postgres::Error> for Session {
    fn on_acquire(&self, c: &mut postgres::Client) -> Result<(), postgres::Error> {
        c.batch_execute(&format!(
            "SET hnsw.ef_search = {}; SET statement_timeout = {}",
            self.ef_search.min(MAX_EF_SEARCH),
            self.statement_timeout_ms
        ))
    }
}

/// A refused statement is the database's answer; anything else (a refused or lost
/// connection, a timeout) means it cannot be reached.
fn db(e: postgres::Error) -> GalleryError {
    match e.as_db_error() {
        Some(d) => by_sqlstate(d.code().code(), d.message()),
        None => GalleryError::Unavailable(e.to_string()),
    }
}

/// What a database error means for the client, by its SQLSTATE: a full disk (53100) is
/// [`GalleryError::NoSpace`] (507); the server shutting down, restarting or not yet
/// accepting connections (class 57P), or a connection exception (class 08), is
/// transient (503, retry); the rest is a refused statement (500).
fn by_sqlstate(code: &str, message: &str) -> GalleryError {
    let text = format!("{message} ({code})");
    match code {
        "53100" => GalleryError::NoSpace {
            place: "the PostgreSQL database".into(),
            message: text,
        },
        c if c.starts_with("57P") || c.starts_with("08") => GalleryError::Unavailable(text),
        _ => GalleryError::Database(text),
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl PostgresGallery {
    /// Connects, sets up or checks the schema, and seeds the table if it never was. Runs
    /// on a thread of its own: start-up happens on the server's runtime thread, where the
    /// blocking client may not run (see [`OffRuntime`]).
    pub fn open(cfg: &GalleryConfig, o: Opening) -> Result<Self, GalleryError> {
        std::thread::scope(|s| {
            s.spawn(|| Self::open_here(cfg, o))
                .join()
                .unwrap_or_else(|_| {
                    Err(GalleryError::Unavailable(
                        "the connecting thread panicked".into(),
                    ))
                })
        })
    }

    fn open_here(cfg: &GalleryConfig, o: Opening) -> Result<Self, GalleryError> {
        let timeout = Duration::from_secs(cfg.postgres_timeout_s);
        let mut pg = postgres::Config::from_str(&cfg.postgres_url).map_err(|e| {
            GalleryError::Unavailable(format!(
                "gallery.postgres_url {}: {e}",
                redact(&cfg.postgres_url)
            ))
        })?;
        pg.connect_timeout(timeout)
            .application_name("simsiam-server");
        let pool = Pool::builder()
            .max_size(cfg.postgres_pool_size)
            .min_idle(Some(1))
            .connection_timeout(timeout)
            .connection_customizer(Box::new(Session {
                ef_search: cfg.ef_search,
                statement_timeout_ms: cfg.postgres_statement_timeout_ms,
            }))
            .build(PostgresConnectionManager::new(pg, NoTls))
            .map_err(|e| {
                GalleryError::Unavailable(format!("{}: {e}", redact(&cfg.postgres_url)))
            })?;
        let g = Self {
            pool: OffRuntime(Some(pool)),
            table: cfg.postgres_table.clone(),
            dim: o.dim,
            ef_search: cfg.ef_search,
            exact_breed_max: cfg.postgres_exact_breed_max,
            last_count: AtomicUsize::new(0),
            health: o.health,
            metrics: o.metrics,
        };
        let count = g.set_up(cfg, o.model, o.seed)?;
        g.counted(count);
        log::info!(
            "gallery: PostgreSQL table {} at {}: {count} items",
            g.table,
            redact(&cfg.postgres_url)
        );
        Ok(g)
    }

    fn conn(&self) -> Result<PooledConnection<Manager>, GalleryError> {
        self.pool
            .get()
            .map_err(|e| GalleryError::Unavailable(e.to_string()))
    }

    fn counted(&self, n: usize) {
        self.last_count.store(n, Ordering::Relaxed);
        self.metrics.gallery_items.store(n, Ordering::Relaxed);
    }

    /// In one transaction under the setup lock: the extension, the schema (created,
    /// migrated or refused), the HNSW index, the seed. The entry count back.
    fn set_up(
        &self,
        cfg: &GalleryConfig,
        model: &str,
        seed: super::Seed,
    ) -> Result<usize, GalleryError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK])
            .map_err(db)?;
        check_pgvector(&mut tx)?;
        tx.batch_execute(META_TABLE).map_err(db)?;
        let version = self.register(&mut tx, model)?;
        self.migrate(&mut tx, version)?;
        self.index(&mut tx, cfg)?;
        self.seed_once(&mut tx, seed)?;
        let count: i64 = tx
            .query_one(
                "SELECT items FROM simsiam_gallery_meta WHERE table_name = $1",
                &[&self.table],
            )
            .map_err(db)?
            .get(0);
        tx.commit().map_err(db)?;
        Ok(count as usize)
    }

    fn place(&self) -> String {
        format!("table {}", self.table)
    }

    /// The table's schema version, after checking that it was made by this server for
    /// this model and width; a new table is registered at version 0.
    fn register(&self, tx: &mut Transaction, model: &str) -> Result<i32, GalleryError> {
        let (t, place) = (&self.table, self.place());
        let meta = tx
            .query_opt(
                "SELECT schema_version, model, dim FROM simsiam_gallery_meta WHERE table_name = $1",
                &[t],
            )
            .map_err(db)?;
        let Some(row) = meta else {
            let exists: bool = tx
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[t])
                .map_err(db)?
                .get(0);
            if exists {
                return Err(GalleryError::Database(format!(
                    "{place} exists but simsiam_gallery_meta has no row for it: it was not made by this server; set gallery.postgres_table to another name"
                )));
            }
            tx.execute(
                "INSERT INTO simsiam_gallery_meta (table_name, schema_version, model, dim) VALUES ($1, 0, $2, $3)",
                &[t, &model, &(self.dim as i32)],
            )
            .map_err(db)?;
            return Ok(0);
        };
        let (version, found_model, found_dim): (i32, String, i32) =
            (row.get(0), row.get(1), row.get(2));
        if found_dim as usize != self.dim {
            return Err(GalleryError::StoredDimension {
                place,
                model: model.to_string(),
                expected: self.dim,
                found: found_dim as usize,
                fix: "set gallery.postgres_table to another table, or drop this one",
            });
        }
        if found_model != model {
            return Err(GalleryError::StoredModel {
                place,
                expected: model.to_string(),
                found: found_model,
                fix:
                    "set gallery.postgres_table to another table (one per model), or drop this one",
            });
        }
        if version > SCHEMA_VERSION {
            return Err(GalleryError::Database(format!(
                "{place} has schema version {version}, newer than this server's {SCHEMA_VERSION}: upgrade the server"
            )));
        }
        Ok(version)
    }

    /// Runs the migrations after `version`.
    fn migrate(&self, tx: &mut Transaction, version: i32) -> Result<(), GalleryError> {
        let t = &self.table;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            log::info!(
                "gallery {}: migrating the schema to version {}",
                self.place(),
                i + 1
            );
            let sql = migration
                .replace("{t}", t)
                .replace("{dim}", &self.dim.to_string());
            tx.batch_execute(&sql).map_err(db)?;
        }
        tx.execute(
            "UPDATE simsiam_gallery_meta SET schema_version = $2 WHERE table_name = $1",
            &[t, &SCHEMA_VERSION],
        )
        .map_err(db)?;
        Ok(())
    }

    /// The HNSW index, where pgvector can build one for this width.
    fn index(&self, tx: &mut Transaction, cfg: &GalleryConfig) -> Result<(), GalleryError> {
        let t = &self.table;
        if self.dim > HNSW_MAX_DIM {
            log::warn!(
                "gallery {}: {}-d vectors are beyond pgvector's HNSW limit of {HNSW_MAX_DIM}: searches scan the table exactly",
                self.place(),
                self.dim
            );
            return Ok(());
        }
        tx.batch_execute(&format!(
            "CREATE INDEX IF NOT EXISTS {t}_embedding_hnsw ON {t} USING hnsw (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})",
            cfg.m, cfg.ef_construction
        ))
        .map_err(db)
    }

    /// Inserts the bundle's seed, once in the table's life.
    fn seed_once(&self, tx: &mut Transaction, seed: super::Seed) -> Result<(), GalleryError> {
        let t = &self.table;
        let seeded: bool = tx
            .query_one(
                "SELECT seeded_at IS NOT NULL FROM simsiam_gallery_meta WHERE table_name = $1",
                &[t],
            )
            .map_err(db)?
            .get(0);
        if seeded {
            return Ok(());
        }
        let n = seed.items.len();
        let entries = seed
            .items
            .into_iter()
            .zip(seed.vectors.chunks(self.dim.max(1)).map(<[f32]>::to_vec))
            .collect();
        let added = insert(tx, t, entries, self.dim, false)?;
        tx.execute(
            "UPDATE simsiam_gallery_meta SET seeded_at = now(), items = items + $2 WHERE table_name = $1",
            &[t, &(added as i64)],
        )
        .map_err(db)?;
        // Fresh statistics, so the planner takes the HNSW index from the first search
        // (autovacuum would only catch up within a minute or so).
        tx.batch_execute(&format!("ANALYZE {t}")).map_err(db)?;
        log::info!(
            "gallery {}: seeded with {n} items from the bundle",
            self.place()
        );
        Ok(())
    }

    /// Records the outcome of a write for readiness.
    fn written<T>(&self, r: Result<T, GalleryError>) -> Result<T, GalleryError> {
        self.health
            .gallery_written(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        r
    }

    /// The `k` nearest rows to `q` among those with `breed_key = key`.
    fn search_breed(
        &self,
        c: &mut impl GenericClient,
        q: &Vector,
        k: usize,
        key: &str,
    ) -> Result<Vec<Hit>, GalleryError> {
        let t = &self.table;
        let in_breed: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM {t} WHERE breed_key = $1"),
                &[&key],
            )
            .map_err(db)?
            .get(0);
        if in_breed as usize <= self.exact_breed_max {
            return self.exact_breed(c, q, k, key);
        }
        // A common breed: the index, searching wide enough that k of the breed are
        // likely among the candidates; exactly if not.
        let total = self.last_count.load(Ordering::Relaxed).max(1) as f64;
        let share = in_breed as f64 / total;
        let ef = ((k as f64 / share * 2.0) as usize).clamp(self.ef_search, MAX_EF_SEARCH);
        let mut tx = c.transaction().map_err(db)?;
        tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {ef}"))
            .map_err(db)?;
        let found = hits(
            tx.query(
                &format!(
                    "SELECT id, breed, source, metadata, embedding <=> $2 FROM {t}
                     WHERE breed_key = $1 ORDER BY embedding <=> $2 LIMIT $3"
                ),
                &[&key, q, &(k as i64)],
            )
            .map_err(db)?,
        );
        tx.commit().map_err(db)?;
        if found.len() < k {
            return self.exact_breed(c, q, k, key);
        }
        Ok(found)
    }

    /// The breed's rows ranked exactly. OFFSET 0 keeps the subquery from being flattened:
    /// the rows come from the `breed_key` index and never through HNSW.
    fn exact_breed(
        &self,
        c: &mut impl GenericClient,
        q: &Vector,
        k: usize,
        key: &str,
    ) -> Result<Vec<Hit>, GalleryError> {
        let t = &self.table;
        let rows = c
            .query(
                &format!(
                    "SELECT id, breed, source, metadata, embedding <=> $2 FROM
                       (SELECT * FROM {t} WHERE breed_key = $1 OFFSET 0) s
                     ORDER BY embedding <=> $2 LIMIT $3"
                ),
                &[&key, q, &(k as i64)],
            )
            .map_err(db)?;
        Ok(hits(rows))
    }
}

/// Rows of `id, breed, source, metadata, distance` as hits (cosine similarity = 1 − distance).
fn hits(rows: Vec<Row>) -> Vec<Hit> {
    rows.into_iter()
        .map(|r| Hit {
            id: r.get(0),
            breed: r.get(1),
            source: r.get(2),
            metadata: r.get(3),
            score: 1.0 - r.get::<_, f64>(4) as f32,
        })
        .collect()
}

/// pgvector must be installed in the database, at least 0.6 (HNSW with cosine).
fn check_pgvector(tx: &mut postgres::Transaction) -> Result<(), GalleryError> {
    if let Err(e) = tx.batch_execute("CREATE EXTENSION IF NOT EXISTS vector") {
        return Err(GalleryError::Database(format!(
            "the pgvector extension is not available ({}): install pgvector 0.6 or later and run CREATE EXTENSION vector as a superuser",
            db(e)
        )));
    }
    let version: String = tx
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .map_err(db)?
        .get(0);
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (0, 6) {
        return Err(GalleryError::Database(format!(
            "pgvector {version} is installed; this server needs 0.6 or later (ALTER EXTENSION vector UPDATE)"
        )));
    }
    Ok(())
}

/// Inserts (or, with `replace`, upserts) rows; how many ids were new.
fn insert(
    tx: &mut postgres::Transaction,
    t: &str,
    entries: Vec<(Item, Vec<f32>)>,
    dim: usize,
    replace: bool,
) -> Result<usize, GalleryError> {
    let on_conflict = if replace {
        "DO UPDATE SET breed = EXCLUDED.breed, breed_key = EXCLUDED.breed_key,
         source = EXCLUDED.source, metadata = EXCLUDED.metadata,
         embedding = EXCLUDED.embedding, model = EXCLUDED.model, updated_at = now()"
    } else {
        "DO NOTHING"
    };
    let stmt = tx
        .prepare(&format!(
            "INSERT INTO {t} (id, breed, breed_key, source, metadata, embedding, model)
             VALUES ($1, $2, $3, $4, $5, $6, (SELECT model FROM simsiam_gallery_meta WHERE table_name = $7))
             ON CONFLICT (id) {on_conflict} RETURNING (xmax = 0)"
        ))
        .map_err(db)?;
    let mut added = 0;
    for (item, v) in entries {
        if v.len() != dim {
            return Err(GalleryError::Dimension {
                expected: dim,
                found: v.len(),
            });
        }
        let key = item.breed.as_deref().map(breed_key);
        let rows = tx
            .query(
                &stmt,
                &[
                    &item.id,
                    &item.breed,
                    &key,
                    &item.source,
                    &item.metadata,
                    &Vector::from(v),
                    &t,
                ],
            )
            .map_err(db)?;
        added += rows.iter().filter(|r| r.get::<_, bool>(0)).count();
    }
    Ok(added)
}

impl Gallery for PostgresGallery {
    fn dim(&self) -> usize {
        self.dim
    }

    fn upsert(&self, entries: Vec<(Item, Vec<f32>)>) -> Result<usize, GalleryError> {
        let t = &self.table;
        let r = (|| {
            let mut c = self.conn()?;
            let mut tx = c.transaction().map_err(db)?;
            let added = insert(&mut tx, t, entries, self.dim, true)?;
            let total: i64 = tx
                .query_one(
                    "UPDATE simsiam_gallery_meta SET items = items + $2 WHERE table_name = $1 RETURNING items",
                    &[t, &(added as i64)],
                )
                .map_err(db)?
                .get(0);
            tx.commit().map_err(db)?;
            Ok(total as usize)
        })();
        let total = self.written(r)?;
        self.counted(total);
        Ok(total)
    }

    fn remove(&self, id: &str) -> Result<Option<usize>, GalleryError> {
        let t = &self.table;
        let r = (|| {
            let mut c = self.conn()?;
            let mut tx = c.transaction().map_err(db)?;
            let gone = tx
                .execute(&format!("DELETE FROM {t} WHERE id = $1"), &[&id])
                .map_err(db)?;
            if gone == 0 {
                return Ok(None);
            }
            let total: i64 = tx
                .query_one(
                    "UPDATE simsiam_gallery_meta SET items = items - $2 WHERE table_name = $1 RETURNING items",
                    &[t, &(gone as i64)],
                )
                .map_err(db)?
                .get(0);
            tx.commit().map_err(db)?;
            Ok(Some(total as usize))
        })();
        let total = self.written(r)?;
        if let Some(n) = total {
            self.counted(n);
        }
        Ok(total)
    }

    fn search(
        &self,
        queries: &[f32],
        k: usize,
        breed: Option<&str>,
    ) -> Result<Vec<Vec<Hit>>, GalleryError> {
        let t = &self.table;
        let mut c = self.conn()?;
        let nearest = format!(
            "SELECT id, breed, source, metadata, embedding <=> $1 FROM {t} ORDER BY embedding <=> $1 LIMIT $2"
        );
        let mut out = Vec::new();
        for q in queries.chunks(self.dim.max(1)) {
            if q.len() != self.dim {
                return Err(GalleryError::Dimension {
                    expected: self.dim,
                    found: q.len(),
                });
            }
            let q = Vector::from(q.to_vec());
            let found = match breed {
                Some(b) => self.search_breed(&mut *c, &q, k, &breed_key(b))?,
                // The index returns at most ef_search rows: widen it for a larger k.
                None if k > self.ef_search => {
                    let mut tx = c.transaction().map_err(db)?;
                    tx.batch_execute(&format!(
                        "SET LOCAL hnsw.ef_search = {}",
                        k.min(MAX_EF_SEARCH)
                    ))
                    .map_err(db)?;
                    let rows = tx.query(&nearest, &[&q, &(k as i64)]).map_err(db)?;
                    tx.commit().map_err(db)?;
                    hits(rows)
                }
                None => hits(c.query(&nearest, &[&q, &(k as i64)]).map_err(db)?),
            };
            out.push(found);
        }
        Ok(out)
    }

    fn counts(&self) -> Result<Counts, GalleryError> {
        let t = &self.table;
        let mut c = self.conn()?;
        let rows = c
            .query(
                &format!("SELECT coalesce(breed, ''), count(*) FROM {t} GROUP BY 1"),
                &[],
            )
            .map_err(db)?;
        let by_breed: std::collections::BTreeMap<String, usize> = rows
            .into_iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as usize))
            .collect();
        let total = by_breed.values().sum();
        self.counted(total);
        Ok(Counts {
            total,
            dim: self.dim,
            by_breed,
        })
    }

    /// Ready when a connection comes within half a second and the table answers.
    fn ready(&self) -> Result<Option<usize>, GalleryError> {
        let mut c = self
            .pool
            .get_timeout(Duration::from_millis(500))
            .map_err(|e| GalleryError::Unavailable(e.to_string()))?;
        let n: i64 = c
            .query_one(
                "SELECT items FROM simsiam_gallery_meta WHERE table_name = $1",
                &[&self.table],
            )
            .map_err(db)?
            .get(0);
        self.counted(n as usize);
        Ok(Some(n as usize))
    }

    /// Every change was committed before its answer: nothing to do.
    fn flush(&self) -> Result<(), GalleryError> {
        Ok(())
    }

    /// The readiness query: a connection and the table answering.
    fn probe(&self) -> Result<(), GalleryError> {
        self.ready().map(|_| ())
    }

    /// The database's disk is not this process's to measure.
    fn free_bytes(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_507_and_a_restarting_database_503() {
        use crate::error::ApiError;
        use actix_web::ResponseError;
        let status = |code: &str| {
            let e = ApiError::from(by_sqlstate(code, "m"));
            (e.status_code().as_u16(), e.code())
        };
        assert_eq!(status("53100"), (507, "insufficient_storage"));
        for restarting in ["57P01", "57P02", "57P03", "08006", "08003"] {
            assert_eq!(status(restarting), (503, "unavailable"), "{restarting}");
        }
        assert_eq!(status("42P01"), (500, "internal"));
        let message = by_sqlstate("53100", "could not extend file").to_string();
        assert!(
            message.contains("could not extend file (53100)"),
            "{message}"
        );
    }

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            redact("postgresql://ann:s3cret@db.example:5432/gallery"),
            "postgresql://ann:***@db.example:5432/gallery"
        );
        assert_eq!(
            redact("postgresql://postgres:@/postgres?host=/tmp/x"),
            "postgresql://postgres:***@/postgres?host=/tmp/x"
        );
        assert_eq!(
            redact("host=/tmp/x user=postgres"),
            "host=/tmp/x user=postgres"
        );
    }
}
