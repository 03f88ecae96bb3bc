// glibc's allocator under a counting front: malloc, calloc, realloc and the aligned variants
// defined here take precedence over libc's for the whole process (glibc documents replacing
// malloc this way) and forward to glibc's own implementation (__libc_*), so the heap is
// unchanged; only calls made while this thread is counting are counted. free does not count.
#include "alloc_count.h"

#include <cerrno>
#include <cstddef>

extern "C" {
void* __libc_malloc(std::size_t size);
void* __libc_calloc(std::size_t n, std::size_t size);
void* __libc_realloc(void* p, std::size_t size);
void* __libc_memalign(std::size_t align, std::size_t size);
void __libc_free(void* p);
}

namespace {
thread_local bool counting = false;
thread_local long count = 0;
inline void note() noexcept {
    if (counting) ++count;
}
}  // namespace

namespace alloc_count {
void start() noexcept {
    count = 0;
    counting = true;
}
long stop() noexcept {
    counting = false;
    return count;
}
bool active() noexcept { return true; }
}  // namespace alloc_count

extern "C" {
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
