//! Header values the gateway writes on every request (request ids, identity headers, limit
//! headers), cut from a buffer that many of them share.
//!
//! An `http::HeaderValue` owns its bytes as a `bytes::Bytes`. Made from a slice, it costs an
//! allocation, and a second one the first time it is cloned (the buffer is promoted to a shared
//! one: a request id is cloned for the upstream). Here each thread keeps a 4 KiB `BytesMut`
//! already shared: a value is written at its end and split off, which costs a reference count,
//! and so do its clones. Once every value cut from the buffer has been dropped, the buffer is
//! reclaimed in place; while some are alive (a response still being written), a new one is
//! allocated. So about a hundred values share one allocation. A buffer is freed once its
//! thread has moved on to another and its last value is gone: each thread holds at most one
//! that no value needs (4 KiB), plus any its live values pin.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderValue;

/// Bytes each thread's buffer holds.
const CHUNK: usize = 4096;
/// Room left below which the buffer is renewed before a value is written: most values (ids,
/// integers, names) fit, so a value rarely has to be moved while being written.
const LOW_WATER: usize = 256;

thread_local! {
    static BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A header value written by `write` into the shared buffer; `None` if the bytes written are
/// not a valid header value (control characters). `write` may write any length: a long value
/// moves to a larger buffer of its own.
pub fn build(write: impl FnOnce(&mut BytesMut)) -> Option<HeaderValue> {
    let bytes = BUF.with_borrow_mut(|buf| {
        if buf.capacity() < LOW_WATER {
            // Reclaims the buffer when no value cut from it is alive, else allocates a new one.
            buf.reserve(CHUNK);
        }
        write(buf);
        buf.split().freeze()
    });
    HeaderValue::from_maybe_shared(bytes).ok()
}

/// `bytes` copied into the shared buffer as a header value; `None` if they are not a valid one.
pub fn copy(bytes: &[u8]) -> Option<HeaderValue> {
    build(|buf| buf.extend_from_slice(bytes))
}

/// `s` as a header value, or the empty value for text that cannot be one. For the values
/// keygate adds itself (ids, workspace names, scopes: validated ASCII), where failing a request
/// over a header it adds would be worse than sending it empty.
pub fn text(s: &str) -> HeaderValue {
    copy(s.as_bytes()).unwrap_or_else(|| HeaderValue::from_static(""))
}

/// A decimal integer, formatted straight into the shared buffer.
pub fn integer(n: u64) -> HeaderValue {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + u8::try_from(rest % 10).expect("a digit");
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    copy(&digits[at..]).expect("digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_hold_their_bytes_across_buffer_renewals() {
        // Enough values, some kept alive and some dropped, to renew the buffer both ways
        // (reclaimed in place, and replaced while values cut from it live on).
        let mut kept = Vec::new();
        for i in 0..5_000u64 {
            let v = integer(i * 7919);
            assert_eq!(v.to_str().unwrap(), (i * 7919).to_string());
            if i % 3 == 0 {
                kept.push((i, v.clone()));
            }
        }
        for (i, v) in &kept {
            assert_eq!(v.to_str().unwrap(), (i * 7919).to_string());
        }
        assert_eq!(integer(0), "0");
        assert_eq!(integer(u64::MAX), u64::MAX.to_string().as_str());
    }

    #[test]
    fn long_and_invalid_values() {
        let long = "s".repeat(3 * CHUNK);
        assert_eq!(text(&long), long.as_str());
        assert_eq!(text("a\nb"), "");
        assert!(copy(b"ok\x7f").is_none());
        assert_eq!(copy(b"after").unwrap(), "after");
    }
}
