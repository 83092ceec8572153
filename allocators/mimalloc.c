/*
 * mimalloc.c -- `mimalloc`: frames from mimalloc (Debian's libmimalloc 2.0.9) through its
 * thread-safe API, mi_malloc_aligned_at / mi_free.
 *
 * Design. A frame is mi_malloc_aligned_at(FrameSize, FileAlignment + 1, 0) from the calling
 * thread's default heap, and goes back with mi_free from any thread. Not mi_malloc_aligned: in
 * 2.0.9 its fast path for a power-of-two size at least the alignment returns a plain small block,
 * which for 256..1024-byte alignments is not aligned (microsoft/mimalloc#700, fixed upstream after
 * 2.0.9; found here by fuzz_alloc_mimalloc, input in fuzz/corpus/fuzz_alloc_mimalloc). The _at
 * entry point always takes the checked path; above 1 KiB the two are the same code.
 *
 * Why the default heap and not a heap per instance. An instance used to own an mi_heap_t and
 * drop it whole with mi_heap_destroy at DeleteAllocator, with nothing kept per frame. But a
 * mimalloc 2.x heap is thread-local: only the thread that created it may allocate from it, and
 * that thread's exit deletes it. Such an instance cannot be KS_CAP_THREAD_SAFE, so the threaded
 * workloads could not run it. The thread-safe route is mimalloc's own: every thread allocates
 * from its default heap and frees anywhere. mimalloc then has nothing per instance to destroy,
 * so, as for tcmalloc and glibc, the instance records its live frames in the sharded set of
 * frame_set.c (one spinlock per shard) and frees them one by one at DeleteAllocator; the set
 * also turns a Free of a frame that is not live into a counted no-op (bad_frees, self_check)
 * instead of corrupting mimalloc. What the set costs against mimalloc called bare, and what the
 * per-instance heap cost, is measured and kept with the benchmark results, not here.
 *
 * Shared heaps: every instance already draws from mimalloc's per-thread heaps, where frames of
 * all sizes and instances interleave, so KSPIN.heap is ignored and KS_CAP_SHARED_HEAP is not
 * claimed (as for tcmalloc). Bare: the entry's `bare` hook is mi_malloc_aligned_at / mi_free
 * with nothing kept per frame, mimalloc as its users call it.
 *
 * Complexity. Allocate and Free are mimalloc's fast paths (a free-list pop from the page of the
 * size class, a push on free; a free from another thread is an atomic push onto the page's
 * thread-free list) plus an expected-O(1) set insert or removal under the frame's shard lock
 * (uncontended: one atomic exchange and one plain store). DeleteAllocator and self_check are
 * O(table slots).
 *
 * Memory overhead. No per-frame header of ours: the set takes 16 to 32 bytes per live frame at
 * its high-water mark plus 64 bytes per shard. mimalloc's size-class rounding (measured with
 * Debian's 2.0.9 over 64 B..4 MiB: at most 20% below 128 KiB, up to 33% above, 50% just past
 * 512 KiB) and, for alignments it cannot meet in place, the alignment slack.
 *
 * Thread safety: KS_CAP_THREAD_SAFE. mimalloc's default-heap API is thread-safe and a frame may
 * be freed on any thread; the set is thread-safe.
 *
 * Under TSan, Free and Allocate release and acquire one sync object standing for mimalloc's
 * internal atomics: mimalloc is not instrumented, so a block freed on one thread and reused on
 * another would otherwise look like a race on the frame. The price is that TSan also sees an
 * order between that Free and that Allocate for unrelated accesses of the two threads.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <mimalloc.h>

#include "frame_set.h"
#include "framing.h"
#include "ksalloc.h"
#include "peer_sync.h"

#define MIMALLOC_DEFAULT_FRAME_BYTES 4096u
/* Limits stated to the harness, the same as the other general-purpose allocators' so that one
 * decoded framing fits them all (mimalloc itself served 3 GiB frames, and 2 GiB alignments, when
 * measured). The verifier writes whole frames, so larger frames would cost that much each. */
#define MIMALLOC_MAX_FRAME_BYTES ((size_t)256 << 20)
#define MIMALLOC_MAX_ALIGN_BYTES ((size_t)1 << 20)
_Static_assert((MIMALLOC_MAX_ALIGN_BYTES & (MIMALLOC_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(MIMALLOC_DEFAULT_FRAME_BYTES <= MIMALLOC_MAX_FRAME_BYTES, "the default frame is within the limit");
_Static_assert(MIMALLOC_MAX_FRAME_BYTES <= UINT32_MAX, "FrameSize is a ULONG");
_Static_assert(MI_MALLOC_VERSION >= 200, "mi_malloc_aligned_at and a thread-safe mi_free as in mimalloc 2.x");

/* mimalloc's internal locks and atomics, as TSan is told of them (peer_sync.h). */
KS_PEER_SYNC_OBJECT(mimalloc_tsan_sync);
#define MIMALLOC_FRAME_ACQUIRED() KS_PEER_FRAME_ACQUIRED(mimalloc_tsan_sync)
#define MIMALLOC_FRAME_RELEASED() KS_PEER_FRAME_RELEASED(mimalloc_tsan_sync)

typedef struct mimalloc_instance {
    ks_sharded_frame_set live; /* the live frames; thread-safe */
    size_t frame_bytes;
    size_t align_bytes;
    atomic_size_t frame_usable_bytes;  /* mi_usable_size of a frame, once one was handed out */
    atomic_ullong allocation_failures; /* off the fast path: an atomic add */
} mimalloc_instance;

/* ---- Frames, as the instance and the bare hook take them from mimalloc ---------------------- */

static void *mimalloc_frame_alloc(size_t frame_bytes, size_t align_bytes)
{
    void *frame = mi_malloc_aligned_at(frame_bytes, align_bytes, 0);
    if (frame != NULL)
        MIMALLOC_FRAME_ACQUIRED();
    return frame;
}

static void mimalloc_frame_free(void *frame)
{
    MIMALLOC_FRAME_RELEASED();
    mi_free(frame);
}

/* ---- Dispatch ------------------------------------------------------------------------------ */

static const ks_framing_rules mimalloc_framing_rules = {
    .default_frames = 0, /* Frames is not a bound: 0 stays 0 */
    .default_frame_bytes = MIMALLOC_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = MIMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = MIMALLOC_MAX_ALIGN_BYTES,
    .min_align_bytes = 1,
};

static NTSTATUS mimalloc_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context; /* the pin's shared heap, if any, has nothing to offer (top comment) */
    if (framing == NULL || context == NULL)
        return STATUS_INVALID_PARAMETER;
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &mimalloc_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    mimalloc_instance *instance = calloc(1, sizeof *instance);
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

static void mimalloc_delete(PVOID context)
{
    mimalloc_instance *instance = context;
    if (instance == NULL)
        return;
    ks_sharded_frame_set_cursor cursor = {0, 0};
    for (void *frame; (frame = ks_sharded_frame_set_next(&instance->live, &cursor)) != NULL;)
        mimalloc_frame_free(frame);
    ks_sharded_frame_set_destroy(&instance->live);
    free(instance);
}

static PVOID mimalloc_allocate(PVOID context)
{
    mimalloc_instance *instance = context;
    void *frame = mimalloc_frame_alloc(instance->frame_bytes, instance->align_bytes);
    if (frame != NULL && !ks_sharded_frame_set_insert(&instance->live, frame)) {
        mimalloc_frame_free(frame); /* untracked, it could not be released at DeleteAllocator */
        frame = NULL;
    }
    if (frame == NULL) {
        atomic_fetch_add_explicit(&instance->allocation_failures, 1, memory_order_relaxed);
        return NULL;
    }
    if (atomic_load_explicit(&instance->frame_usable_bytes, memory_order_relaxed) == 0)
        atomic_store_explicit(&instance->frame_usable_bytes, mi_usable_size(frame), memory_order_relaxed);
    return frame;
}

static void mimalloc_free(PVOID context, PVOID buffer)
{
    mimalloc_instance *instance = context;
    if (buffer == NULL)
        return;
    if (ks_sharded_frame_set_release(&instance->live, buffer))
        mimalloc_frame_free(buffer); /* else not live here: ignored, reported by self_check */
}

/* ---- Self-check and counters ---------------------------------------------------------------- */

static NTSTATUS mimalloc_self_check(PVOID context, char *why, size_t why_bytes)
{
    mimalloc_instance *instance = context;
    if (!ks_sharded_frame_set_check(&instance->live, instance->align_bytes, "mimalloc", why, why_bytes))
        return STATUS_DATA_ERROR;
    ks_sharded_frame_set_cursor cursor = {0, 0}; /* the host runs no other callback meanwhile (ksalloc.h) */
    /* Every tracked frame came from mi_malloc_aligned_at. Not asked of mi_is_in_heap_region:
     * 2.0.9 answers from a segment map of the lowest 40 TiB of addresses, and under ASan
     * mimalloc's segments are mapped above that. */
    for (void *frame; (frame = ks_sharded_frame_set_next(&instance->live, &cursor)) != NULL;) {
        if (mi_usable_size(frame) < instance->frame_bytes) {
            snprintf(why, why_bytes, "mimalloc: live frame %p has %zu usable bytes, less than the %zu-byte frame",
                     frame, mi_usable_size(frame), instance->frame_bytes);
            return STATUS_DATA_ERROR;
        }
    }
    return STATUS_SUCCESS;
}

static size_t mimalloc_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    mimalloc_instance *instance = context;
    uint64_t frames_live = ks_sharded_frame_set_count(&instance->live);
    uint64_t table_bytes = ks_sharded_frame_set_table_bytes(&instance->live);
    uint64_t usable_bytes = atomic_load_explicit(&instance->frame_usable_bytes, memory_order_relaxed);
    const ks_counter all[] = {
        {"frames_live", frames_live},
        /* What this instance holds: its frames in mimalloc's size class, and its table. */
        {"reserved_bytes", frames_live * usable_bytes + table_bytes},
        {"usable_frame_bytes", usable_bytes},
        {"tracking_bytes", table_bytes},
        {"allocation_failures", atomic_load_explicit(&instance->allocation_failures, memory_order_relaxed)},
        {"bad_frees", ks_sharded_frame_set_foreign_releases(&instance->live)},
        {"frame_bytes", instance->frame_bytes},
    };
    size_t count = sizeof all / sizeof all[0];
    size_t filled = count < max_counters ? count : max_counters;
    for (size_t i = 0; i < filled; i++)
        out[i] = all[i];
    return filled;
}

/* ---- Bare: mimalloc as its users call it -------------------------------------------------------- */

static void *mimalloc_bare_allocate(size_t frame_bytes, size_t align_bytes)
{
    return mimalloc_frame_alloc(frame_bytes, align_bytes);
}

static void mimalloc_bare_free(void *frame, size_t frame_bytes, size_t align_bytes)
{
    (void)frame_bytes; /* mi_free_size_aligned is mi_free outside mimalloc's debug builds */
    (void)align_bytes;
    mimalloc_frame_free(frame);
}

static const ks_bare_ops mimalloc_bare = {.allocate = mimalloc_bare_allocate, .free = mimalloc_bare_free};

static const KSALLOCATOR_DISPATCH mimalloc_dispatch = {
    .InitializeAllocator = mimalloc_initialize,
    .DeleteAllocator = mimalloc_delete,
    .Allocate = mimalloc_allocate,
    .Free = mimalloc_free,
};

const ks_allocator_entry ks_allocator_mimalloc = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mimalloc",
    .description = "mimalloc 2.x: mi_malloc_aligned_at/mi_free on the thread's default heap, live frames in a "
                   "sharded side hash set for DeleteAllocator; thread-safe",
    .caps = KS_CAP_THREAD_SAFE,
    .max_frame_bytes = MIMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = MIMALLOC_MAX_ALIGN_BYTES,
    .dispatch = &mimalloc_dispatch,
    .self_check = mimalloc_self_check,
    .counters = mimalloc_counters,
    .bare = &mimalloc_bare,
};
