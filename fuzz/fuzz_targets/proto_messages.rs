//! Wire messages: the input is one byte choosing the message type (an index into
//! `portcullis_fuzz::proto::MESSAGES`, modulo its length), then the encoded message. See
//! that module for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::proto::MESSAGES;

fuzz_target!(|data: &[u8]| {
    let Some((sel, bytes)) = data.split_first() else {
        return;
    };
    (MESSAGES[usize::from(*sel) % MESSAGES.len()].1)(bytes);
});
