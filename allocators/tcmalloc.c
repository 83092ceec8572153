/*
 * tcmalloc.c -- `tcmalloc`: frames from gperftools' tcmalloc (Debian's libtcmalloc_minimal 2.10)
 * through its explicit tc_memalign / tc_free entry points.
 *
 * Design. tcmalloc has one process-wide heap and no per-instance heap or arena to destroy, so an
 * instance must know its live frames to honour "DeleteAllocator releases frames still live". It
 * keeps them in a side table, the sharded live-frame set of frame_set.c (open-addressing tables in
 * shards picked by address, one spinlock each), which makes the instance thread-safe as tcmalloc
 * itself is. A frame tcmalloc hands out that the set cannot record (its shard's table could not
 * grow) goes straight back and Allocate returns NULL. A side table rather than a header in front of
 * each frame because a header would change what tcmalloc is asked for: FrameSize + header crosses a
 * size class for the power-of-two frames streams use (measured with 2.10: a 4112-byte request is
 * served from the 4608-byte class, 12.5% more than 4096, and at 4096-byte alignment from 8192
 * bytes), and in front of an A-aligned frame a header costs A bytes. With the table, tcmalloc sees
 * exactly the request a plain caller would make, which is the point of a peer in a benchmark. The
 * table also lets Free refuse an address that is not a live frame of this instance (counted in
 * bad_frees, reported by self_check) instead of passing it to tc_free. Frames go back with tc_free,
 * not tc_free_sized: a tc_memalign block may sit in a larger size class than FrameSize names.
 * Shared heaps: there is nothing to share beyond the process heap -- every instance already draws
 * from the one tcmalloc page heap -- so KSPIN.heap is ignored and KS_CAP_SHARED_HEAP is not
 * claimed. Bare: the entry's `bare` hook is tc_memalign / tc_free with nothing kept per frame,
 * tcmalloc as its users call it, so that the benchmarks show what the set costs.
 *
 * Complexity. Allocate: tcmalloc's fast path (thread-cache pop) plus one expected-O(1) insert under
 * the frame's shard lock (uncontended: one atomic exchange and one plain store); growing a table is
 * amortised O(1). Free: the same lock, an expected-O(1) lookup and removal, and tc_free.
 * DeleteAllocator: O(table slots). self_check: O(table slots).
 *
 * Memory overhead. Table: 8 bytes per slot, between 2 and 4 slots per frame at the peak live count
 * (16-32 bytes per frame; it does not shrink), and 64 bytes per shard. Plus tcmalloc's own:
 * size-class rounding (measured with Debian's 2.10 over 64 B..4 MiB: at most 20%, under 1% past
 * 1 MiB), and for alignments above a size class's natural alignment a larger class or, for
 * page-sized and larger alignments, whole pages (a 100-byte frame at 4096-byte alignment takes 4096).
 *
 * Thread safety: KS_CAP_THREAD_SAFE: tcmalloc is thread-safe and so is the sharded set; a frame may
 * be freed on any thread. Under TSan, Free and Allocate release and acquire one sync object
 * standing for tcmalloc's internal locks: tcmalloc is not instrumented, so a frame freed on one
 * thread and reused on another would otherwise look like a race. The price is that TSan also sees
 * an order between that Free and that Allocate for unrelated accesses of the two threads.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <gperftools/malloc_extension_c.h>
#include <gperftools/tcmalloc.h>

#include "frame_set.h"
#include "framing.h"
#include "ksalloc.h"
#include "peer_sync.h"
#include "sanitizers.h"

#define TCMALLOC_DEFAULT_FRAME_BYTES 4096u
/* Limits stated to the harness, the same as the other general-purpose allocators' so that one
 * decoded framing fits them all (tcmalloc itself served 3 GiB frames, and 2 GiB alignments, when
 * measured). The verifier writes whole frames, so larger frames would cost that much each. */
#define TCMALLOC_MAX_FRAME_BYTES ((size_t)256 << 20)
#define TCMALLOC_MAX_ALIGN_BYTES ((size_t)1 << 20)
_Static_assert((TCMALLOC_MAX_ALIGN_BYTES & (TCMALLOC_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(TCMALLOC_DEFAULT_FRAME_BYTES <= TCMALLOC_MAX_FRAME_BYTES, "the default frame is within the limit");
_Static_assert(TCMALLOC_MAX_FRAME_BYTES <= UINT32_MAX, "FrameSize is a ULONG");

/* tcmalloc's internal locks and atomics, as TSan is told of them (peer_sync.h). */
KS_PEER_SYNC_OBJECT(tcmalloc_tsan_sync);
#define TCMALLOC_FRAME_ACQUIRED() KS_PEER_FRAME_ACQUIRED(tcmalloc_tsan_sync)
#define TCMALLOC_FRAME_RELEASED() KS_PEER_FRAME_RELEASED(tcmalloc_tsan_sync)

#if KS_ASAN
/*
 * gperftools leaks one object at load time, before any ksalloc code runs: InitModule() makes a
 * default MallocExtension with operator new and TCMallocGuard's Register() then overwrites the
 * only pointer to it. With gcc's ASan, operator new is ASan's, so LeakSanitizer reports those 8
 * bytes at every exit of a process that loads libtcmalloc_minimal -- which, with the Makefile's
 * --as-needed, is exactly a process that links this file. The suppression names that one
 * function. Weak, so that a program with its own suppressions overrides it (and should then
 * carry this line too).
 */
const char *__lsan_default_suppressions(void);
__attribute__((weak)) const char *__lsan_default_suppressions(void)
{
    return "leak:MallocExtension::Register\n";
}
/* Without this, every exiting process (each Criterion worker, each CLI run) prints the
 * five-line "Suppressions used" table for that one known leak. LSAN_OPTIONS still overrides. */
const char *__lsan_default_options(void);
__attribute__((weak)) const char *__lsan_default_options(void)
{
    return "print_suppressions=0";
}
#endif

typedef struct tcmalloc_instance {
    size_t frame_bytes;
    size_t align_bytes;
    ks_sharded_frame_set live;         /* the live frames; thread-safe */
    atomic_size_t frame_tc_bytes;      /* tc_malloc_size of a frame (its size class), once one was handed out */
    atomic_ullong allocation_failures; /* off the fast path: an atomic add */
} tcmalloc_instance;

/* ---- Dispatch ------------------------------------------------------------------------------ */

static const ks_framing_rules tcmalloc_framing_rules = {
    .default_frames = 0, /* Frames is not a bound: 0 stays 0 */
    .default_frame_bytes = TCMALLOC_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = TCMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = TCMALLOC_MAX_ALIGN_BYTES,
    .min_align_bytes = 1,
};

static NTSTATUS tcmalloc_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context; /* the pin's shared heap, if any, has nothing to offer (top comment) */
    if (framing == NULL || context == NULL)
        return STATUS_INVALID_PARAMETER;
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &tcmalloc_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    ks_framing_write_back(framing, &settled);
    tcmalloc_instance *instance = calloc(1, sizeof *instance);
    if (instance == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    instance->frame_bytes = settled.frame_bytes;
    instance->align_bytes = settled.align_bytes;
    if (!ks_sharded_frame_set_init(&instance->live)) {
        free(instance);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    *context = instance;
    return STATUS_SUCCESS;
}

static void tcmalloc_delete(PVOID context)
{
    tcmalloc_instance *instance = context;
    if (instance == NULL)
        return;
    TCMALLOC_FRAME_RELEASED(); /* frames still live go back to tcmalloc too */
    ks_sharded_frame_set_cursor cursor = {0, 0};
    for (void *frame; (frame = ks_sharded_frame_set_next(&instance->live, &cursor)) != NULL;)
        tc_free(frame);
    ks_sharded_frame_set_destroy(&instance->live);
    free(instance);
}

static PVOID tcmalloc_allocate(PVOID context)
{
    tcmalloc_instance *instance = context;
    void *frame = tc_memalign(instance->align_bytes, instance->frame_bytes);
    if (frame == NULL) {
        atomic_fetch_add_explicit(&instance->allocation_failures, 1, memory_order_relaxed);
        return NULL;
    }
    TCMALLOC_FRAME_ACQUIRED();
    if (!ks_sharded_frame_set_insert(&instance->live, frame)) { /* untracked, it could not be released later */
        TCMALLOC_FRAME_RELEASED();
        tc_free(frame);
        atomic_fetch_add_explicit(&instance->allocation_failures, 1, memory_order_relaxed);
        return NULL;
    }
    if (atomic_load_explicit(&instance->frame_tc_bytes, memory_order_relaxed) == 0)
        atomic_store_explicit(&instance->frame_tc_bytes, tc_malloc_size(frame), memory_order_relaxed);
    return frame;
}

static void tcmalloc_free(PVOID context, PVOID buffer)
{
    tcmalloc_instance *instance = context;
    if (buffer == NULL)
        return;
    if (!ks_sharded_frame_set_release(&instance->live, buffer))
        return; /* not a live frame here: ignored, reported by self_check */
    TCMALLOC_FRAME_RELEASED();
    tc_free(buffer);
}

/* ---- Self-check and counters ---------------------------------------------------------------- */

/* Checks one live frame beyond what the table knows: tcmalloc owns it and it is big enough. */
static NTSTATUS tcmalloc_check_frame(const tcmalloc_instance *instance, void *frame, char *why, size_t why_bytes)
{
    if (MallocExtension_GetOwnership(frame) != MallocExtension_kOwned) {
        snprintf(why, why_bytes, "tcmalloc: frame %p is live in the instance but tcmalloc does not own it", frame);
        return STATUS_DATA_ERROR;
    }
    if (tc_malloc_size(frame) < instance->frame_bytes) {
        snprintf(why, why_bytes, "tcmalloc: frame %p has %zu usable bytes, less than the %zu-byte frame", frame,
                 tc_malloc_size(frame), instance->frame_bytes);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static NTSTATUS tcmalloc_self_check(PVOID context, char *why, size_t why_bytes)
{
    tcmalloc_instance *instance = context;
    if (!ks_sharded_frame_set_check(&instance->live, instance->align_bytes, "tcmalloc", why, why_bytes))
        return STATUS_DATA_ERROR;
    ks_sharded_frame_set_cursor cursor = {0, 0}; /* the host runs no other callback meanwhile (ksalloc.h) */
    for (void *frame; (frame = ks_sharded_frame_set_next(&instance->live, &cursor)) != NULL;) {
        NTSTATUS status = tcmalloc_check_frame(instance, frame, why, why_bytes);
        if (!NT_SUCCESS(status))
            return status;
    }
    return STATUS_SUCCESS;
}

static size_t tcmalloc_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    tcmalloc_instance *instance = context;
    size_t process_allocated_bytes = 0, process_heap_bytes = 0;
    MallocExtension_GetNumericProperty("generic.current_allocated_bytes", &process_allocated_bytes);
    MallocExtension_GetNumericProperty("generic.heap_size", &process_heap_bytes);
    uint64_t frames_live = ks_sharded_frame_set_count(&instance->live);
    uint64_t table_bytes = ks_sharded_frame_set_table_bytes(&instance->live);
    uint64_t frame_tc_bytes = atomic_load_explicit(&instance->frame_tc_bytes, memory_order_relaxed);
    const ks_counter all[] = {
        {"frames_live", frames_live},
        /* What this instance holds: its frames in tcmalloc's size class, and its table. */
        {"reserved_bytes", frames_live * frame_tc_bytes + table_bytes},
        {"frame_tc_bytes", frame_tc_bytes},
        {"table_slots", table_bytes / sizeof(uintptr_t)},
        {"allocation_failures", atomic_load_explicit(&instance->allocation_failures, memory_order_relaxed)},
        {"bad_frees", ks_sharded_frame_set_foreign_releases(&instance->live)},
        /* Process-wide, every tcmalloc instance together (tcmalloc is not the process malloc). */
        {"tcmalloc_allocated_bytes", process_allocated_bytes},
        {"tcmalloc_heap_bytes", process_heap_bytes},
    };
    size_t count = sizeof all / sizeof all[0];
    size_t filled = count < max_counters ? count : max_counters;
    for (size_t i = 0; i < filled; i++)
        out[i] = all[i];
    return filled;
}

/* ---- Bare: tcmalloc as its users call it ------------------------------------------------------- */

static void *tcmalloc_bare_allocate(size_t frame_bytes, size_t align_bytes)
{
    void *frame = tc_memalign(align_bytes, frame_bytes);
    if (frame != NULL)
        TCMALLOC_FRAME_ACQUIRED();
    return frame;
}

/* tc_free, not tc_free_sized: a tc_memalign block may sit in a larger size class than its size. */
static void tcmalloc_bare_free(void *frame, size_t frame_bytes, size_t align_bytes)
{
    (void)frame_bytes;
    (void)align_bytes;
    TCMALLOC_FRAME_RELEASED();
    tc_free(frame);
}

static const ks_bare_ops tcmalloc_bare = {.allocate = tcmalloc_bare_allocate, .free = tcmalloc_bare_free};

static const KSALLOCATOR_DISPATCH tcmalloc_dispatch = {
    .InitializeAllocator = tcmalloc_initialize,
    .DeleteAllocator = tcmalloc_delete,
    .Allocate = tcmalloc_allocate,
    .Free = tcmalloc_free,
};

const ks_allocator_entry ks_allocator_tcmalloc = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "tcmalloc",
    .description = "gperftools tcmalloc 2.x: tc_memalign/tc_free, live frames in a sharded side hash set for "
                   "DeleteAllocator; thread-safe",
    .caps = KS_CAP_THREAD_SAFE,
    .max_frame_bytes = TCMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = TCMALLOC_MAX_ALIGN_BYTES,
    .dispatch = &tcmalloc_dispatch,
    .self_check = tcmalloc_self_check,
    .counters = tcmalloc_counters,
    .bare = &tcmalloc_bare,
};
