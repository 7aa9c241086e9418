//! The benchmark harness of `make bench` (see `benchmarks/README.md`):
//! a deterministic event generator ([`gen`]) shared by the Kafka load
//! generator ([`loadgen`]) and the in-process dataflow-core benchmark
//! ([`core`]); isolated environments running the real `analytics` binary
//! ([`env`]); the replaced design as a baseline ([`baseline`]); the
//! measurements ([`measure`]); and the report ([`report`]) that `bench all`
//! ([`all`]) writes.

pub mod all;
pub mod baseline;
pub mod core;
pub mod env;
pub mod gen;
pub mod loadgen;
pub mod measure;
pub mod report;
pub mod stats;
