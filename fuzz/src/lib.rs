//! Shared by the fuzz targets and the seed generator (`examples/seeds.rs`): the table of
//! wire messages the `proto_messages` target decodes (its input's first byte is an index
//! into [`proto::MESSAGES`]).

pub mod proto;
