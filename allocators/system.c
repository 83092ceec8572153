/*
 * system.c -- `system`: glibc's own allocator, even in a process where jemalloc has replaced
 * malloc (the Makefile links -ljemalloc, so malloc/free/posix_memalign resolve to jemalloc).
 *
 * Design: frames come from __libc_memalign and go back through __libc_free, the entry points
 * glibc exports under its own names and that an interposed malloc does not replace. Under a
 * sanitizer that replaces the heap (ASan, TSan, MSan, HWASan) glibc's entry points cannot be
 * paired: the sanitizer intercepts __libc_memalign but not __libc_free, so handing its memory to
 * glibc's free aborts. There the frames come from posix_memalign/free, i.e. from the sanitizer's
 * allocator, which is what a sanitizer build exists for (and lets LSan see every frame).
 * FrameSize 0 becomes 4096, written back; Frames is not a bound (0 stays 0). Because
 * DeleteAllocator must release frames still live and glibc has no per-instance heap to drop, the
 * instance keeps its live frames in a sharded hash set beside the frames (not in them:
 * frame_set.c says why). The set also turns a Free of a frame that is not live into a counted
 * no-op instead of heap corruption; self_check reports it.
 *
 * Bare: the entry's `bare` hook is glibc as its users call it, the same two entry points with
 * nothing kept per frame, so that the benchmarks show what the set costs.
 *
 * Complexity: Allocate and Free cost glibc's memalign/free plus an expected O(1) set insert or
 * remove under the frame's shard lock (uncontended: one atomic exchange and one plain store).
 * That lock and the set are the price of releasing live frames at DeleteAllocator, the same for
 * every frame size.
 *
 * Memory: glibc's chunk overhead and alignment padding per frame (not visible from here), plus
 * 16 to 32 bytes per live frame of set table at its high-water mark. The reserved_bytes counter
 * is best effort: FrameSize * frames_live plus the set table, without glibc's own overhead.
 *
 * Thread safety: KS_CAP_THREAD_SAFE; glibc is thread-safe and so is the sharded set.
 */
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "frame_set.h"
#include "framing.h"
#include "ksalloc.h"

/* ---- Which heap ---------------------------------------------------------------------------- */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || defined(__SANITIZE_HWADDRESS__)
#define KS_SYSTEM_SANITIZER_HEAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer) ||     \
    __has_feature(hwaddress_sanitizer)
#define KS_SYSTEM_SANITIZER_HEAP 1
#endif
#endif
#ifndef KS_SYSTEM_SANITIZER_HEAP
#define KS_SYSTEM_SANITIZER_HEAP 0
#endif

#if KS_SYSTEM_SANITIZER_HEAP
static void *system_heap_alloc(size_t align_bytes, size_t size_bytes)
{
    void *frame = NULL;
    if (align_bytes < sizeof(void *))
        align_bytes = sizeof(void *); /* posix_memalign's minimum */
    return posix_memalign(&frame, align_bytes, size_bytes) == 0 ? frame : NULL;
}
static void system_heap_free(void *frame)
{
    free(frame);
}
#else
/* Exported by glibc (malloc/malloc.c), declared in no public header. */
extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *ptr);

extern void *__libc_malloc(size_t size);

static void *system_heap_alloc(size_t align_bytes, size_t size_bytes)
{
    return __libc_memalign(align_bytes, size_bytes);
}
static void system_heap_free(void *frame)
{
    __libc_free(frame);
}

/* With jemalloc as malloc, glibc's heap is initialised by the first __libc_* call, and
 * ptmalloc_init makes the calling thread the owner of main_arena without counting it. When that
 * first call came from a worker thread (two threads of the conformance suite's thread test, or
 * `run --instances`), the worker's exit uncounted main_arena and a later thread exit aborted in
 * __malloc_arena_thread_freeres ("a->attached_threads > 0"), intermittently. Initialising glibc's
 * heap here, on the main thread before main, is what a program that uses glibc's malloc does. */
__attribute__((constructor)) static void system_heap_warm_up(void)
{
    __libc_free(__libc_malloc(1));
}
#endif

/* ---- Tuning and limits ---------------------------------------------------------------------- */

#ifndef KS_SYSTEM_DEFAULT_FRAME_BYTES
#define KS_SYSTEM_DEFAULT_FRAME_BYTES 4096u
#endif
#ifndef KS_SYSTEM_MAX_FRAME_BYTES
#define KS_SYSTEM_MAX_FRAME_BYTES ((size_t)256 << 20)
#endif
#ifndef KS_SYSTEM_MAX_ALIGN_BYTES
#define KS_SYSTEM_MAX_ALIGN_BYTES ((size_t)1 << 20)
#endif

_Static_assert((KS_SYSTEM_MAX_ALIGN_BYTES & (KS_SYSTEM_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(KS_SYSTEM_DEFAULT_FRAME_BYTES <= KS_SYSTEM_MAX_FRAME_BYTES, "default frame within the limit");
_Static_assert(KS_SYSTEM_MAX_FRAME_BYTES <= ULONG_MAX, "FrameSize is a ULONG");

/* ---- The instance --------------------------------------------------------------------------- */

typedef struct system_instance {
    ks_sharded_frame_set live; /* thread-safe: frames live, and frees of frames that were not */
    size_t frame_bytes;
    size_t align_bytes;
} system_instance;

static const ks_framing_rules system_framing_rules = {
    .default_frames = 0, /* Frames is not a bound: 0 stays 0 */
    .default_frame_bytes = KS_SYSTEM_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = KS_SYSTEM_MAX_FRAME_BYTES,
    .max_align_bytes = KS_SYSTEM_MAX_ALIGN_BYTES,
    .min_align_bytes = 1,
};

static NTSTATUS system_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context; /* glibc's heap is process-wide; a shared heap in the pin is not used */
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &system_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    system_instance *instance = calloc(1, sizeof *instance);
    if (instance == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (!ks_sharded_frame_set_init(&instance->live)) {
        free(instance);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    ks_framing_write_back(framing, &settled);
    instance->frame_bytes = settled.frame_bytes;
    instance->align_bytes = settled.align_bytes;
    *context = instance;
    return STATUS_SUCCESS;
}

static void system_delete(PVOID context)
{
    system_instance *instance = context;
    ks_sharded_frame_set_cursor cursor = {0, 0};
    for (void *frame; (frame = ks_sharded_frame_set_next(&instance->live, &cursor)) != NULL;)
        system_heap_free(frame);
    ks_sharded_frame_set_destroy(&instance->live);
    free(instance);
}

static PVOID system_allocate(PVOID context)
{
    system_instance *instance = context;
    void *frame = system_heap_alloc(instance->align_bytes, instance->frame_bytes);
    if (frame == NULL)
        return NULL;
    /* The set could not grow: a frame we could not release later is refused. */
    if (!ks_sharded_frame_set_insert(&instance->live, frame)) {
        system_heap_free(frame);
        return NULL;
    }
    return frame;
}

static void system_free(PVOID context, PVOID buffer)
{
    system_instance *instance = context;
    if (ks_sharded_frame_set_release(&instance->live, buffer))
        system_heap_free(buffer); /* else not live here: ignored, reported by self_check */
}

static NTSTATUS system_self_check(PVOID context, char *why, size_t why_bytes)
{
    system_instance *instance = context;
    if (!ks_sharded_frame_set_check(&instance->live, instance->align_bytes, "system", why, why_bytes))
        return STATUS_DATA_ERROR;
    return STATUS_SUCCESS;
}

static size_t system_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    system_instance *instance = context;
    uint64_t frames_live = ks_sharded_frame_set_count(&instance->live);
    uint64_t tracking_bytes = ks_sharded_frame_set_table_bytes(&instance->live);
    uint64_t bad_frees = ks_sharded_frame_set_foreign_releases(&instance->live);
    const ks_counter counters[] = {
        {"frames_live", frames_live},
        {"reserved_bytes", frames_live * instance->frame_bytes + tracking_bytes}, /* best effort */
        {"tracking_bytes", tracking_bytes},
        {"bad_frees", bad_frees},
    };
    size_t count = 0;
    for (; count < sizeof counters / sizeof counters[0] && count < max_counters; count++)
        out[count] = counters[count];
    return count;
}

/* ---- Bare: glibc as its users call it -------------------------------------------------------- */

static void *system_bare_allocate(size_t frame_bytes, size_t align_bytes)
{
    return system_heap_alloc(align_bytes, frame_bytes);
}

static void system_bare_free(void *frame, size_t frame_bytes, size_t align_bytes)
{
    (void)frame_bytes; /* glibc has no sized free */
    (void)align_bytes;
    system_heap_free(frame);
}

static const ks_bare_ops system_bare = {.allocate = system_bare_allocate, .free = system_bare_free};

static const KSALLOCATOR_DISPATCH system_dispatch = {
    .InitializeAllocator = system_initialize,
    .DeleteAllocator = system_delete,
    .Allocate = system_allocate,
    .Free = system_free,
};

const ks_allocator_entry ks_allocator_system = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "system",
    .description = "glibc's malloc (__libc_memalign/__libc_free) even with jemalloc linked in; unbounded",
    .caps = KS_CAP_THREAD_SAFE,
    .max_frame_bytes = KS_SYSTEM_MAX_FRAME_BYTES,
    .max_align_bytes = KS_SYSTEM_MAX_ALIGN_BYTES,
    .dispatch = &system_dispatch,
    .self_check = system_self_check,
    .counters = system_counters,
    .bare = &system_bare,
};
