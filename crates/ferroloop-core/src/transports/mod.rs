//! The parts of socket transports that need no Python: buffering and sending of written bytes.
//!
//! The binding's transports (`src/transports/`) own the sockets' Python objects and call the
//! protocols; what they keep of the byte stream lives here, testable without an interpreter.

pub mod write_buffer;

pub use write_buffer::WriteBuffer;
