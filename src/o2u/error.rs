//! Why training a window failed, in the three kinds a caller treats differently: the window's
//! data (skip the window), the device (fall back or stop), or a bug in the engine (stop).

/// A window that could not be trained and scored.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The window's data cannot be trained on (too few samples, a label out of range, features
    /// of the wrong length, a loss that is not finite). Another window may well succeed.
    #[error("the window's data cannot be trained on: {0}")]
    Data(String),
    /// The accelerator failed (a lost GPU, out of device memory).
    #[error("the training device failed: {0}")]
    Device(#[source] candle_core::Error),
    /// Anything else: shapes or types that disagree are a bug in the engine, not in the data.
    #[error("the engine failed (a bug; please report it): {0}")]
    Bug(#[source] candle_core::Error),
}

impl From<candle_core::Error> for WindowError {
    fn from(e: candle_core::Error) -> Self {
        use candle_core::Error as E;
        match e {
            // The engine's own checks of its input say `bail!`: a message about the data.
            E::Msg(m) => WindowError::Data(m),
            E::Cuda(_) | E::Metal(_) | E::NotCompiledWithCudaSupport | E::NotCompiledWithMetalSupport => WindowError::Device(e),
            E::WithBacktrace { inner, .. } | E::Context { inner, .. } => WindowError::from(*inner),
            other => WindowError::Bug(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_sorted_into_data_device_and_bug() {
        assert!(matches!(WindowError::from(candle_core::Error::Msg("need at least 2 samples".into())), WindowError::Data(_)));
        assert!(matches!(WindowError::from(candle_core::Error::NotCompiledWithCudaSupport), WindowError::Device(_)));
        let shape = candle_core::Error::ShapeMismatch { buffer_size: 3, shape: (2, 2).into() };
        assert!(matches!(WindowError::from(shape), WindowError::Bug(_)));
        let wrapped = candle_core::Error::Msg("label 12 out of range".into()).bt();
        assert!(matches!(WindowError::from(wrapped), WindowError::Data(_)), "a backtrace does not change the kind");
    }
}
