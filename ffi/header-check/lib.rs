//! Nothing but the test in `tests/header.rs`: include/msr.h against cbindgen's output.
