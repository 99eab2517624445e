pub mod balance;
pub mod config;
pub mod pool;
pub mod queue;
pub mod proxy { pub mod body { pub type RequestBody = http_body_util::Empty<bytes::Bytes>; } }
