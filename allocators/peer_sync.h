/*
 * peer_sync.h -- internal: what ThreadSanitizer must be told about a general-purpose library it
 * did not instrument (jemalloc, mimalloc and tcmalloc as Debian ships them), written once for the
 * three allocators over them.
 *
 * Happens-before. TSan cannot see the locks and atomics inside such a library, so a frame freed on
 * one thread and handed out again on another looks like a race on the frame. An allocator over
 * the library defines one sync object for it (KS_PEER_SYNC_OBJECT) and brackets the library:
 * KS_PEER_FRAME_RELEASED before every frame goes back (Free, and DeleteAllocator's release of the
 * frames still live), KS_PEER_FRAME_ACQUIRED after every frame comes out. All accesses to a frame
 * before its Free then happen before all accesses after its reuse. The two calls are declared
 * here, not taken from sanitizer/tsan_interface.h, because Debian's gcc ships no sanitizer headers.
 *
 * Interceptors called from the library. mimalloc and tcmalloc call intercepted libc functions
 * (memset, memcpy) on metadata they recycle between threads through those same invisible atomics,
 * which TSan would report as races inside the library; called_from_lib tells it to ignore
 * interceptors called from there. jemalloc too: its mutexes are pthread mutexes that TSan models
 * through the interceptors, but the memory they live in and the state around them move through
 * jemalloc's own atomics, which it cannot see. The conformance suite under TSan (which forks a
 * process per case) reported, inside libjemalloc only, a "double lock" after fork (jemalloc's
 * postfork-child handler re-initialises the mutexes its prefork handler locked, on Linux, instead
 * of unlocking them) and a race between one thread's arena creation and another's trylock.
 * A program gets one __tsan_default_suppressions: this weak one,
 * kept once by the linker whichever allocator files a program links, names both libraries (a
 * program with its own list overrides it and should carry these lines).
 *
 * Outside TSan builds everything here compiles to nothing.
 */
#ifndef KS_PEER_SYNC_H
#define KS_PEER_SYNC_H

#include "sanitizers.h"

#if KS_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define KS_PEER_SYNC_OBJECT(name) static char name
#define KS_PEER_FRAME_ACQUIRED(name) __tsan_acquire(&(name))
#define KS_PEER_FRAME_RELEASED(name) __tsan_release(&(name))

const char *__tsan_default_suppressions(void);
__attribute__((weak)) const char *__tsan_default_suppressions(void)
{
    return "called_from_lib:libmimalloc.so.2\ncalled_from_lib:libtcmalloc_minimal.so.4\ncalled_from_lib:libjemalloc.so.2\n";
}
#else
#define KS_PEER_SYNC_OBJECT(name) _Static_assert(1, "no sync object outside TSan")
#define KS_PEER_FRAME_ACQUIRED(name) ((void)0)
#define KS_PEER_FRAME_RELEASED(name) ((void)0)
#endif

#endif /* KS_PEER_SYNC_H */
