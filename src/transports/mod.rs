//! Native transports: the objects asyncio's `_make_socket_transport` returns, with the data
//! path (receive, `data_received`, `write`, flushing) in Rust. Each mirrors its asyncio
//! counterpart in `selector_events.py` and has a thin Python subclass in
//! `python/ferroloop/_transports.py` for what is not on the data path.

pub mod socket;
