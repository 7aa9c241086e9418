//! The process's allocator: jemalloc, for every binary and test built on
//! this crate, so that `bench core` measures what the service runs.
//!
//! glibc's malloc kept freed memory in its per-thread arenas: after two
//! minutes at 20,000 events/s the service had 1.9 GB in use and 3.2 GB
//! taken from the system (`malloc_stats`), and a `malloc_trim` gave back
//! 0.7 GB. jemalloc returns dirty pages after about a second from a
//! background thread (`dirty_decay_ms`), and purges them at once instead
//! of keeping them lazily freed (`muzzy_decay_ms: 0`), so that RSS follows
//! what is in use. Its per-thread caches were also faster than glibc's on
//! the dataflow's short-lived pane and sketch vectors (benchmarks/RESULTS.md,
//! "Memory: heap profile, the publisher's stash, jemalloc, encoded
//! sketches").
//!
//! These options are compiled into jemalloc (`JEMALLOC_SYS_WITH_MALLOC_CONF`
//! in `.cargo/config.toml`); `_RJEM_MALLOC_CONF` in the environment still
//! overrides them.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes the process's code holds in allocations, and bytes of memory
/// jemalloc has mapped and resident (its metadata and not yet returned
/// dirty pages included): jemalloc's `stats.allocated` and
/// `stats.resident`, refreshed by this call. `None` if jemalloc refuses.
pub fn heap_bytes() -> Option<(u64, u64)> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    let allocated = tikv_jemalloc_ctl::stats::allocated::read().ok()?;
    let resident = tikv_jemalloc_ctl::stats::resident::read().ok()?;
    Some((allocated as u64, resident as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn heap_bytes_see_an_allocation() {
        let (before, resident) = super::heap_bytes().expect("jemalloc stats");
        assert!(resident >= before);
        // Large enough that other tests running meanwhile cannot hide it.
        let held = vec![1u8; 512 << 20];
        let (after, _) = super::heap_bytes().expect("jemalloc stats");
        assert!(after >= before + (256 << 20), "{before} -> {after}");
        drop(held);
    }
}
