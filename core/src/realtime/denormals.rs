//! Denormal floats flushed to zero for the duration of an engine call.
//!
//! An operation that reads or produces a denormal (below 1.2e-38 in f32) takes about a
//! hundred cycles instead of one on x86-64 processors: a model or data with such values
//! made a call 10x slower than its cost model allows (a convolution's predict ran at
//! 6-9 ns per multiply-add). Real-time code flushes them; every public call of the engine
//! sets the SSE control register's flush-to-zero and denormals-are-zero bits on entry and
//! restores the caller's value on return (also when unwinding), so the host's own floating
//! point is untouched. Values that small change no prediction: they are below f32's
//! normal range, where the engine's results are already rounding noise.

/// Flush-to-zero (bit 15) and denormals-are-zero (bit 6) of MXCSR.
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = 0x8040;

/// While alive, denormals read or produced by this thread's SSE/AVX arithmetic are zeros.
#[must_use]
pub(crate) struct FlushDenormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

impl FlushDenormals {
    /// Sets the flush bits (a no-op on other architectures); dropping restores them.
    #[inline]
    pub(crate) fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let mut saved: u32 = 0;
            // SAFETY: stmxcsr stores the 32-bit control register to a valid, writable u32.
            unsafe {
                core::arch::asm!("stmxcsr [{}]", in(reg) &mut saved, options(nostack, preserves_flags));
            }
            let flushed = saved | FTZ_DAZ;
            if flushed != saved {
                // SAFETY: ldmxcsr loads a valid control word: the current one with two mode
                // bits set (no exception is unmasked, no reserved bit is touched).
                unsafe {
                    core::arch::asm!("ldmxcsr [{}]", in(reg) &flushed, options(nostack, readonly, preserves_flags));
                }
            }
            FlushDenormals { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushDenormals {}
    }
}

impl Drop for FlushDenormals {
    #[inline]
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.saved & FTZ_DAZ != FTZ_DAZ {
            // SAFETY: restores the control word read in `new`.
            unsafe {
                core::arch::asm!("ldmxcsr [{}]", in(reg) &self.saved, options(nostack, readonly, preserves_flags));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denormals_are_zero_inside_and_the_mode_is_restored() {
        let tiny = core::hint::black_box(1e-39f32); // a denormal
        let two = core::hint::black_box(2.0f32);
        assert!(tiny * two > 0.0);
        {
            let _flush = FlushDenormals::new();
            let inside = core::hint::black_box(tiny) * two;
            if cfg!(target_arch = "x86_64") {
                assert_eq!(inside, 0.0);
            }
            {
                let _nested = FlushDenormals::new(); // already set: restores nothing
            }
            let still = core::hint::black_box(tiny) * two;
            if cfg!(target_arch = "x86_64") {
                assert_eq!(still, 0.0);
            }
        }
        assert!(
            core::hint::black_box(tiny) * two > 0.0,
            "the caller's mode is restored"
        );
    }
}
