// Counts the heap allocations a thread makes between start() and stop(), whoever makes them
// (this program, libmsr, MuJoCo, the C++ runtime): alloc_count.cpp replaces malloc and its
// siblings in the executable, which the dynamic linker then binds every shared library to.
#pragma once

namespace alloc_count {
/// Starts counting this thread's allocations from zero.
void start() noexcept;
/// Stops counting; returns how many allocations this thread made since start().
long stop() noexcept;
/// How many pthread mutexes this thread locked between the last start() and stop().
long locks() noexcept;
}  // namespace alloc_count
