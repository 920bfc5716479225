//! Hot cache.
