//! What a stored response costs in memory, counted the way the allocator spends it: the
//! bytes each heap allocation asks for plus the allocator's own per-allocation overhead,
//! and the slots of the growable tables that hold it (a hash table or deque keeps up to
//! about twice its entries' room). The store's budget (`MAX_BYTES`) is in these bytes, so
//! it bounds the process's memory rather than the text's length: counting only the text
//! (as before) put the real cost of a short answer at 2.3 times the estimate.

use std::mem::size_of;

use crate::turn::{Message, Part};

/// What the allocator spends beyond the bytes asked for, per allocation (glibc's malloc: an
/// 8-byte header, sizes rounded up to 16).
const PER_ALLOCATION: usize = 16;

/// A growable table's room per entry at worst: a hash table grows at 7/8 full to twice its
/// slots (16/7 slots per entry just after), a deque doubles.
pub(super) fn table_entry<T>() -> usize {
    size_of::<T>() * 16 / 7 + 1
}

/// A heap allocation of `len` bytes (none when empty).
pub(super) fn heap(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len + PER_ALLOCATION
    }
}

/// A string's heap (its capacity: stored strings are built to fit).
pub(super) fn string(s: &str) -> usize {
    heap(s.len())
}

/// The heap a message owns (its inline size is counted where it is held).
pub(super) fn message(m: &Message) -> usize {
    let parts: usize = m
        .content
        .iter()
        .map(|p| match p {
            Part::Text(t) | Part::ImageUrl(t) => string(t),
            Part::File(f) => string(&f.digest) + string(&f.media_type) + heap(f.bytes.len()),
        })
        .sum();
    let calls: usize = m
        .tool_calls
        .iter()
        .map(|c| string(&c.id) + string(&c.name) + string(&c.arguments))
        .sum();
    heap(m.content.capacity() * size_of::<Part>())
        + parts
        + heap(m.tool_calls.capacity() * size_of::<crate::turn::CalledTool>())
        + calls
        + m.name.as_deref().map_or(0, string)
        + m.tool_call_id.as_deref().map_or(0, string)
}

/// The heap of a vector of messages, each message's included.
pub(super) fn messages(ms: &Vec<Message>) -> usize {
    heap(ms.capacity() * size_of::<Message>()) + ms.iter().map(message).sum::<usize>()
}
