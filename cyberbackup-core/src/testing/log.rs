//! A writer that captures log lines in memory, for tests that grep what a driver logged
//! (the zero-knowledge checks: no file name or content may reach the server's logs).

use std::sync::{Mutex, PoisonError};

/// Appends everything written to a shared buffer; give `move || LogWriter(buffer)` to a
/// `tracing_subscriber` layer as its writer.
#[derive(Debug, Clone, Copy)]
pub struct LogWriter(pub &'static Mutex<Vec<u8>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn every_write_lands_in_the_buffer_in_order() {
        let buffer: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let mut writer = LogWriter(buffer);
        writer.write_all(b"first ").unwrap();
        LogWriter(buffer).write_all(b"second").unwrap();
        assert_eq!(buffer.lock().unwrap().as_slice(), b"first second");
    }
}
