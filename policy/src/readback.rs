//! Parsing `nft -j list table inet portcullis` into a normalized [`Ruleset`] (WIP).

use crate::ruleset::Ruleset;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    #[error("readback is not valid nft JSON: {0}")]
    Json(String),
}

/// One rule's counter values as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCounter {
    pub chain: String,
    pub index: usize,
    pub packets: u64,
    pub bytes: u64,
    pub rule: String,
}

pub fn parse_readback(_json: &str) -> Result<(Ruleset, Vec<RuleCounter>), ReadbackError> {
    Err(ReadbackError::Json("not implemented yet".into()))
}
