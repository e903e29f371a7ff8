//! Durable files: the one way the agent writes a record that must survive a crash or a
//! power cut (last-known-good, the commit-confirm records, the denial spool's metadata and
//! batches, the fail-closed marker).
//!
//! The helper itself is [`portcullis_os::durable`] (shared with the controller's PKI and
//! the kept revocation list); this module re-exports it under the agent's name for it.

pub use portcullis_os::durable::{
    DurableError, append_synced, remove, rename_synced, replace_unsynced, sync_dir, sync_parent,
    tmp_path, write_atomic, write_synced,
};
