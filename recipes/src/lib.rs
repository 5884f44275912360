//! Gears recipes: write-behind and write-through from Redis hashes to PostgreSQL, MongoDB,
//! MySQL/MariaDB and SQLite.
//!
//! - `spec`: the options a script gives `writeBehind({...})`, checked.
//! - `change`: captured changes, their streams and entries, coalescing.
//! - `convert`: hash values to typed cells.
//! - `target`: what a connector implements; `sql` the SQL the SQL connectors share;
//!   `postgres`, `mysql`, `sqlite`, `mongodb` the connectors.

pub mod change;
pub mod convert;
pub mod mongodb;
pub mod mysql;
pub mod postgres;
pub mod spec;
pub mod sql;
pub mod sqlite;
pub mod target;

pub use change::{Change, Op};
pub use convert::{Cell, ColType};
pub use spec::{Delivery, Kind, OnFlush, Spec, TargetKind};
pub use target::{connect, Checkpoint, Row, Schema, Target, TargetError};
pub mod admission;
pub mod backfill;
pub mod capture;
pub mod pipeline;
pub mod preview;
pub mod registry;

pub use registry::Recipes;
