// glibc's allocator under a counting front: malloc, calloc, realloc and the aligned variants
// defined here take precedence over libc's for the whole process (glibc documents replacing
// malloc this way) and forward to glibc's own implementation (__libc_*), so the heap is
// unchanged; only calls made while this thread is counting are counted. free does not count.
// pthread_mutex_lock is counted the same way (forwarded to the next definition, libc's):
// the locks C and C++ code takes (MuJoCo, the C++ runtime). Rust's own locks are futexes,
// not pthread mutexes: libmsr's hot path takes none by construction (a session is claimed
// with one atomic flag; see ffi/src/lib.rs).
#include "alloc_count.h"

#include <dlfcn.h>
#include <pthread.h>

#include <cerrno>
#include <cstddef>

extern "C" {
void* __libc_malloc(std::size_t size);
void* __libc_calloc(std::size_t n, std::size_t size);
void* __libc_realloc(void* p, std::size_t size);
void* __libc_memalign(std::size_t align, std::size_t size);
void* __libc_valloc(std::size_t size);
void* __libc_pvalloc(std::size_t size);
void __libc_free(void* p);
}

namespace {
thread_local bool counting = false;
thread_local long count = 0;
thread_local long lock_count = 0;
inline void note() noexcept {
    if (counting) ++count;
}
using LockFn = int (*)(pthread_mutex_t*);
// libc's pthread_mutex_lock, found during static initialisation, before main and before any
// thread (dlsym may allocate: not counted then); never written again.
const LockFn real_lock = reinterpret_cast<LockFn>(dlsym(RTLD_NEXT, "pthread_mutex_lock"));
}  // namespace

namespace alloc_count {
void start() noexcept {
    count = 0;
    lock_count = 0;
    counting = true;
}
long locks() noexcept { return lock_count; }
long stop() noexcept {
    counting = false;
    return count;
}
}  // namespace alloc_count

extern "C" {
int pthread_mutex_lock(pthread_mutex_t* m) {
    if (counting) ++lock_count;
    // A lock taken by another static initialiser before ours ran: look it up (not stored).
    const LockFn lock = real_lock ? real_lock : reinterpret_cast<LockFn>(dlsym(RTLD_NEXT, "pthread_mutex_lock"));
    return lock(m);
}
void* malloc(std::size_t size) {
    note();
    return __libc_malloc(size);
}
void* calloc(std::size_t n, std::size_t size) {
    note();
    return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t size) {
    note();
    return __libc_realloc(p, size);
}
void free(void* p) { __libc_free(p); }
void* memalign(std::size_t align, std::size_t size) {
    note();
    return __libc_memalign(align, size);
}
void* valloc(std::size_t size) {
    note();
    return __libc_valloc(size);
}
void* pvalloc(std::size_t size) {
    note();
    return __libc_pvalloc(size);
}
void* reallocarray(void* p, std::size_t n, std::size_t size) {
    note();
    std::size_t bytes = 0;
    if (__builtin_mul_overflow(n, size, &bytes)) {
        errno = ENOMEM;
        return nullptr;
    }
    return __libc_realloc(p, bytes);
}
void* aligned_alloc(std::size_t align, std::size_t size) {
    note();
    return __libc_memalign(align, size);
}
int posix_memalign(void** out, std::size_t align, std::size_t size) {
    note();
    if (align < sizeof(void*) || (align & (align - 1)) != 0) return EINVAL;
    void* p = __libc_memalign(align, size);
    if (!p && size != 0) return ENOMEM;
    *out = p;
    return 0;
}
}
