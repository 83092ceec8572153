/*
 * mimalloc.c -- `mimalloc`: frames from a private mimalloc heap (Debian's libmimalloc 2.0.9).
 *
 * Design. Each instance owns one mi_heap_t (mi_heap_new at InitializeAllocator); a frame is
 * mi_heap_malloc_aligned_at(heap, FrameSize, FileAlignment + 1, 0) and goes back with mi_free.
 * Not mi_heap_malloc_aligned: in 2.0.9 its fast path for a power-of-two size at least the
 * alignment returns a plain small block, which for 256..1024-byte alignments is not aligned
 * (microsoft/mimalloc#700, fixed upstream after 2.0.9; found here by fuzz_alloc_mimalloc, input
 * in fuzz/corpus/fuzz_alloc_mimalloc). The _at entry point always takes the checked path.
 * DeleteAllocator is mi_heap_destroy, which releases every page of the heap in one sweep, frames
 * still live included, without visiting them one by one. On a pin with a shared ks_heap, every
 * mimalloc instance on that heap shares one mi_heap (heap->attach("mimalloc")), so their frames
 * of any size interleave in the same pages; the last instance to detach destroys it. A frame still
 * live when its instance is deleted from a shared heap therefore stays allocated until that last
 * detach -- the shared mi_heap is the unit mimalloc can release, as a jemalloc arena is for
 * jemalloc. The ks_heap region itself is not used: mimalloc takes its memory from the OS.
 *
 * Complexity. Allocate and Free are mimalloc's fast paths: O(1) (a free-list pop from the page of
 * the size class, a push on free) apart from page refills; alignments above 16 bytes go through
 * mimalloc's aligned path, which may over-allocate a block by up to the alignment.
 * DeleteAllocator is O(pages of the heap). self_check is O(blocks of the heap).
 *
 * Memory overhead. No per-frame header of ours. mimalloc's size-class rounding (measured with
 * Debian's 2.0.9 over 64 B..4 MiB: at most 20% below 128 KiB, up to 33% above, 50% just past
 * 512 KiB), its per-page metadata and, for alignments it cannot meet in place, the alignment
 * slack. Per instance: this struct plus mimalloc's mi_heap_t (a few KiB, from the thread's
 * backing heap).
 *
 * Thread safety: NOT thread-safe, and more than that, thread-affine. mimalloc's heaps belong to
 * the thread that created them ("a heap can only be used for allocation in the thread that
 * created it"; mi_free is fine from any thread), and when that thread exits mimalloc deletes all
 * of its heaps. So: InitializeAllocator, Allocate, DeleteAllocator, self_check and the
 * reserved_bytes counter must run on the thread that created the mi_heap (for a shared heap, the
 * thread of the first instance that attached), and that thread must outlive the instance; Free
 * may run on any thread, one call at a time as for every instance without KS_CAP_THREAD_SAFE.
 * Violations are detected, not trusted: Allocate on another thread returns NULL and counts a
 * foreign_thread_refusal; an instance joining a shared mi_heap from another thread is refused with
 * STATUS_NOT_SUPPORTED; DeleteAllocator on another thread cannot touch the heap safely (it may
 * already be gone with its thread) and leaks it rather than corrupt mimalloc. Threads are told
 * apart by a serial number that is never reused, not by pthread_t, which is.
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

#include "framing.h"
#include "ksalloc.h"

#define MIMALLOC_FAMILY "mimalloc"
#define MIMALLOC_DEFAULT_FRAME_BYTES 4096u
/* Limits stated to the harness, the same as the other general-purpose allocators' so that one
 * decoded framing fits them all (mimalloc itself served 3 GiB frames, and 2 GiB alignments, when
 * measured). The verifier writes whole frames, so larger frames would cost that much each. */
#define MIMALLOC_MAX_FRAME_BYTES ((size_t)256 << 20)
#define MIMALLOC_MAX_ALIGN_BYTES ((size_t)1 << 20)
_Static_assert((MIMALLOC_MAX_ALIGN_BYTES & (MIMALLOC_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(MIMALLOC_DEFAULT_FRAME_BYTES <= MIMALLOC_MAX_FRAME_BYTES, "the default frame is within the limit");
_Static_assert(MIMALLOC_MAX_FRAME_BYTES <= UINT32_MAX, "FrameSize is a ULONG");

_Static_assert(MIMALLOC_DEFAULT_FRAME_BYTES % 16u == 0, "the default frame keeps mimalloc's natural alignment");
_Static_assert(MI_MALLOC_VERSION >= 200, "mi_heap_destroy and mi_heap_visit_blocks as in mimalloc 2.x");

#if defined(__SANITIZE_THREAD__)
#define MIMALLOC_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MIMALLOC_TSAN 1
#endif
#endif
#ifndef MIMALLOC_TSAN
#define MIMALLOC_TSAN 0
#endif

#if MIMALLOC_TSAN
/* TSan's synchronisation annotations (sanitizer/tsan_interface.h, declared here because Debian's
 * gcc ships no sanitizer headers). One object stands for mimalloc's internal locks and atomics,
 * which TSan cannot see because the library is not instrumented: every Free releases it before
 * the frame goes back to mimalloc, every Allocate acquires it after a frame comes out, so all
 * accesses to a frame before its Free happen before all accesses after its reuse. */
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char mimalloc_tsan_sync;
#define MIMALLOC_FRAME_ACQUIRED() __tsan_acquire(&mimalloc_tsan_sync)
#define MIMALLOC_FRAME_RELEASED() __tsan_release(&mimalloc_tsan_sync)
/*
 * The library's own calls to intercepted libc functions (memset/memcpy on its metadata, which it
 * recycles between threads through atomics TSan does not see) would be reported as races inside
 * the library; called_from_lib tells TSan to ignore interceptors called from it. A program gets
 * one __tsan_default_suppressions, so mimalloc.c and tcmalloc.c define the same weak one naming
 * both libraries, and whichever the linker keeps covers both (a program with its own list
 * overrides this one and should carry these lines).
 */
const char *__tsan_default_suppressions(void);
__attribute__((weak)) const char *__tsan_default_suppressions(void)
{
    return "called_from_lib:libmimalloc.so.2\ncalled_from_lib:libtcmalloc_minimal.so.4\n";
}
#else
#define MIMALLOC_FRAME_ACQUIRED() ((void)0)
#define MIMALLOC_FRAME_RELEASED() ((void)0)
#endif

/* The family state on a shared ks_heap: one mi_heap for every instance on it. */
typedef struct mimalloc_shared {
    mi_heap_t *heap;
    uint64_t owner_serial;     /* thread that created heap; the only one that may allocate */
    uint64_t heap_frames_live; /* blocks live in heap, from all instances, deleted ones included */
} mimalloc_shared;

typedef struct mimalloc_instance {
    mi_heap_t *heap;
    uint64_t owner_serial;
    ks_heap *shared_heap;    /* NULL for a private heap */
    mimalloc_shared *shared; /* shared_heap's family state, or NULL */
    size_t frame_bytes;
    size_t align_bytes;
    uint64_t frames_live;
    uint64_t private_frames_live; /* heap_frames_live of a private heap (== frames_live) */
    uint64_t allocation_failures;
    uint64_t foreign_thread_refusals;
} mimalloc_instance;

/* ---- Thread identity ------------------------------------------------------------------------- */

static atomic_uint_fast64_t mimalloc_next_thread_serial = 1;
static _Thread_local uint64_t mimalloc_thread_serial;

/* A number for the calling thread, unique for the life of the process (0 is never used). */
static uint64_t mimalloc_current_thread(void)
{
    if (mimalloc_thread_serial == 0)
        mimalloc_thread_serial =
            (uint64_t)atomic_fetch_add_explicit(&mimalloc_next_thread_serial, 1, memory_order_relaxed);
    return mimalloc_thread_serial;
}

static uint64_t *mimalloc_heap_frames_live(mimalloc_instance *instance)
{
    return instance->shared ? &instance->shared->heap_frames_live : &instance->private_frames_live;
}

/* ---- Shared heap state --------------------------------------------------------------------- */

static NTSTATUS mimalloc_shared_create(ks_heap *heap, void *arg, void **state)
{
    (void)heap;
    (void)arg;
    mimalloc_shared *shared = calloc(1, sizeof *shared);
    if (shared == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    shared->heap = mi_heap_new();
    if (shared->heap == NULL) {
        free(shared);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    shared->owner_serial = mimalloc_current_thread();
    *state = shared;
    return STATUS_SUCCESS;
}

/* Run by the last instance to detach. On a thread other than the heap's creator the heap cannot
 * be destroyed safely (see the top comment), so it is left to mimalloc's thread-exit cleanup. */
static void mimalloc_shared_destroy(ks_heap *heap, void *state)
{
    (void)heap;
    mimalloc_shared *shared = state;
    if (shared->owner_serial == mimalloc_current_thread())
        mi_heap_destroy(shared->heap);
    free(shared);
}

/* ---- Dispatch ------------------------------------------------------------------------------ */

static const ks_framing_rules mimalloc_framing_rules = {
    .default_frames = 0, /* Frames is not a bound: 0 stays 0 */
    .default_frame_bytes = MIMALLOC_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = MIMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = MIMALLOC_MAX_ALIGN_BYTES,
    .min_align_bytes = 1,
};

static NTSTATUS mimalloc_attach_heap(mimalloc_instance *instance, ks_heap *heap)
{
    void *state = NULL;
    NTSTATUS status = heap->attach(heap, MIMALLOC_FAMILY, mimalloc_shared_create, NULL, &state);
    if (!NT_SUCCESS(status))
        return status;
    mimalloc_shared *shared = state;
    if (shared->owner_serial != instance->owner_serial) {
        /* Another thread created this mi_heap; this thread could never allocate from it. */
        heap->detach(heap, MIMALLOC_FAMILY, mimalloc_shared_destroy);
        return STATUS_NOT_SUPPORTED;
    }
    instance->shared_heap = heap;
    instance->shared = shared;
    instance->heap = shared->heap;
    return STATUS_SUCCESS;
}

static NTSTATUS mimalloc_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    const KSPIN *pin = initial_context;
    if (framing == NULL || context == NULL)
        return STATUS_INVALID_PARAMETER;
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &mimalloc_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    ks_framing_write_back(framing, &settled);
    mimalloc_instance *instance = calloc(1, sizeof *instance);
    if (instance == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    instance->frame_bytes = settled.frame_bytes;
    instance->align_bytes = settled.align_bytes;
    instance->owner_serial = mimalloc_current_thread();
    if (pin != NULL && pin->heap != NULL) {
        status = mimalloc_attach_heap(instance, pin->heap);
    } else {
        instance->heap = mi_heap_new();
        status = instance->heap ? STATUS_SUCCESS : STATUS_INSUFFICIENT_RESOURCES;
    }
    if (!NT_SUCCESS(status)) {
        free(instance);
        return status;
    }
    *context = instance;
    return STATUS_SUCCESS;
}

static void mimalloc_delete(PVOID context)
{
    mimalloc_instance *instance = context;
    if (instance == NULL)
        return;
    MIMALLOC_FRAME_RELEASED(); /* frames still live go back to mimalloc too */
    if (instance->shared_heap != NULL)
        instance->shared_heap->detach(instance->shared_heap, MIMALLOC_FAMILY, mimalloc_shared_destroy);
    else if (instance->owner_serial == mimalloc_current_thread())
        mi_heap_destroy(instance->heap);
    /* else: a foreign thread; the heap is leaked on purpose (top comment). */
    free(instance);
}

static PVOID mimalloc_allocate(PVOID context)
{
    mimalloc_instance *instance = context;
    if (instance->owner_serial != mimalloc_current_thread()) {
        instance->foreign_thread_refusals++;
        return NULL;
    }
    void *frame = mi_heap_malloc_aligned_at(instance->heap, instance->frame_bytes, instance->align_bytes, 0);
    if (frame == NULL) {
        instance->allocation_failures++;
        return NULL;
    }
    MIMALLOC_FRAME_ACQUIRED();
    instance->frames_live++;
    (*mimalloc_heap_frames_live(instance))++;
    return frame;
}

static void mimalloc_free(PVOID context, PVOID buffer)
{
    mimalloc_instance *instance = context;
    if (buffer == NULL)
        return;
    MIMALLOC_FRAME_RELEASED();
    mi_free(buffer);
    instance->frames_live--;
    (*mimalloc_heap_frames_live(instance))--;
}

/* ---- Self-check and counters ---------------------------------------------------------------- */

typedef struct mimalloc_walk {
    uint64_t blocks;
    uint64_t small_blocks; /* blocks too small to hold a frame of this instance */
    size_t frame_bytes;
    uint64_t reserved_bytes;
} mimalloc_walk;

static bool mimalloc_visit_block(const mi_heap_t *heap, const mi_heap_area_t *area, void *block, size_t block_bytes,
                                 void *arg)
{
    (void)heap;
    mimalloc_walk *walk = arg;
    if (block == NULL) { /* one call per area before its blocks */
        walk->reserved_bytes += area->reserved;
        return true;
    }
    walk->blocks++;
    if (block_bytes < walk->frame_bytes)
        walk->small_blocks++;
    return true;
}

static NTSTATUS mimalloc_self_check(PVOID context, char *why, size_t why_bytes)
{
    mimalloc_instance *instance = context;
    if (instance->owner_serial != mimalloc_current_thread()) {
        snprintf(why, why_bytes, "mimalloc: self_check on thread %llu, but heap %p belongs to thread %llu",
                 (unsigned long long)mimalloc_current_thread(), (void *)instance->heap,
                 (unsigned long long)instance->owner_serial);
        return STATUS_UNSUCCESSFUL;
    }
    /* Frees from other threads wait in delayed lists until collected; count only once they land. */
    mi_heap_collect(instance->heap, false);
    mimalloc_walk walk = {.frame_bytes = instance->shared ? 0 : instance->frame_bytes};
    mi_heap_visit_blocks(instance->heap, true, mimalloc_visit_block, &walk);
    uint64_t expected = *mimalloc_heap_frames_live(instance);
    if (walk.blocks != expected) {
        snprintf(why, why_bytes, "mimalloc: heap %p holds %llu live blocks, but its instances handed out %llu frames",
                 (void *)instance->heap, (unsigned long long)walk.blocks, (unsigned long long)expected);
        return STATUS_DATA_ERROR;
    }
    if (walk.small_blocks != 0) {
        snprintf(why, why_bytes, "mimalloc: heap %p holds %llu blocks smaller than the %zu-byte frame",
                 (void *)instance->heap, (unsigned long long)walk.small_blocks, instance->frame_bytes);
        return STATUS_DATA_ERROR;
    }
    if (instance->frames_live > expected) {
        snprintf(why, why_bytes, "mimalloc: instance has %llu frames live, more than its heap's %llu",
                 (unsigned long long)instance->frames_live, (unsigned long long)expected);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static size_t mimalloc_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    mimalloc_instance *instance = context;
    ks_counter all[6] = {
        {"frames_live", instance->frames_live},
        {"heap_frames_live", *mimalloc_heap_frames_live(instance)},
        {"allocation_failures", instance->allocation_failures},
        {"foreign_thread_refusals", instance->foreign_thread_refusals},
        {"frame_bytes", instance->frame_bytes},
    };
    size_t count = 5;
    /* Walking the heap's pages is only safe on its own thread. For a shared heap this is the
     * whole shared mi_heap, as for a shared jemalloc arena. */
    if (instance->owner_serial == mimalloc_current_thread()) {
        mimalloc_walk walk = {.frame_bytes = 0};
        mi_heap_visit_blocks(instance->heap, false, mimalloc_visit_block, &walk);
        all[count++] = (ks_counter){"reserved_bytes", walk.reserved_bytes};
    }
    size_t filled = count < max_counters ? count : max_counters;
    for (size_t i = 0; i < filled; i++)
        out[i] = all[i];
    return filled;
}

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
    .description = "mimalloc 2.x: one mi_heap per instance (or per shared heap), destroyed whole; thread-affine",
    .caps = KS_CAP_SHARED_HEAP | KS_CAP_ANY_SIZE,
    .max_frame_bytes = MIMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = MIMALLOC_MAX_ALIGN_BYTES,
    .dispatch = &mimalloc_dispatch,
    .self_check = mimalloc_self_check,
    .counters = mimalloc_counters,
};
