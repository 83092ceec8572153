/*
 * jemalloc.c -- `jemalloc`: jemalloc 5's mallocx/sdallocx on an arena of the instance's own.
 *
 * Design: InitializeAllocator creates an arena ("arenas.create") and DeleteAllocator destroys it
 * ("arena.<i>.destroy"), which discards every frame still live in one step. Every call passes
 * MALLOCX_ALIGN(FileAlignment + 1) | MALLOCX_ARENA(arena) and a tcache flag; sdallocx gets the
 * size and the same flags, so jemalloc never looks the size up. FrameSize 0 becomes 4096,
 * written back; Frames is not a bound (0 stays 0).
 *
 * The tcache decision. jemalloc's automatic per-thread tcache must not be used: its bins are
 * per size class, not per arena, so an automatic tcache would hand this instance frames of other
 * arenas and keep frames of this arena cached after the arena is destroyed (jemalloc requires
 * every tcache that touched an arena to be flushed before arena.<i>.destroy). That leaves two
 * choices: MALLOCX_TCACHE_NONE, where every Allocate and Free takes the arena's bin or extent
 * mutex (thread-safe; measured with jemalloc 5.3 on x86-64, 90 to 175 ns per op for frames of
 * 64 B to 4 KiB against about 20 ns with a tcache, and the same cost either way above
 * opt.tcache_max, 32 KiB by default, where no tcache is used), or one explicit
 * tcache per instance ("tcache.create"/"tcache.destroy"), which keeps jemalloc's real fast path
 * (a lock-free pop from a thread cache) but may be used by one thread at a time. This file takes
 * the explicit tcache: the dispatch contract already says an instance without
 * KS_CAP_THREAD_SAFE is driven by one thread at a time, which is exactly the tcache's rule, and
 * it is the jemalloc that users measure in production. So the entry does NOT claim
 * KS_CAP_THREAD_SAFE. If jemalloc has no explicit tcache left (it has 4093), the instance falls
 * back to MALLOCX_TCACHE_NONE and says so in its counters. The tcache is destroyed (flushed)
 * before the arena.
 *
 * Shared heap (KS_CAP_SHARED_HEAP | KS_CAP_ANY_SIZE): when the pin has a heap, all jemalloc
 * instances on it share one arena, created by the first heap->attach("jemalloc") and destroyed
 * by the last detach; the heap's mmap'ed region itself is not used, the arena is the shared
 * pool. Pins of any FrameSize may share it. An arena shared by live instances cannot be
 * destroyed to drop one instance's frames, so in this mode the instance tracks its live frames
 * in a hash set beside them (frame_set.c) and frees them one by one at DeleteAllocator; the set also turns a
 * Free of a frame that is not live into a counted no-op. Private instances track nothing.
 *
 * Complexity: Allocate and Free are jemalloc's: O(1) tcache pop/push on a hit, an arena refill
 * or flush (amortised over a batch) on a miss; large frames (above opt.tcache_max, 32 KiB by
 * default) go to the arena's extent allocator. Shared mode adds an expected O(1) set operation.
 *
 * Complexity of the lifetime: InitializeAllocator and DeleteAllocator create and destroy an arena,
 * mostly mmap/munmap work, on the order of a millisecond for the pair; shared instances after
 * the first pay only for the tcache.
 *
 * Memory: jemalloc's size-class rounding (four classes per doubling, so up to 25% over FrameSize
 * once past 128 bytes, more for tiny frames: 17 bytes take 32; an alignment above 16 rounds a
 * small frame up to a multiple of it) and its arena metadata; the explicit tcache holds freed
 * small frames until it fills or is flushed. Shared mode adds 16 to 32 bytes per live frame of
 * set table. counters: reserved_bytes is the private arena's mapped bytes
 * ("stats.arenas.<i>.mapped" after an "epoch" refresh), or in shared mode this instance's share,
 * frames_live * usable frame size, since the arena is the shared heap.
 *
 * Thread safety: not thread-safe per instance (the explicit tcache). Different instances may run
 * on different threads at once, also on one shared arena: jemalloc locks its arenas, and
 * attach/detach are thread-safe.
 */
#include <jemalloc/jemalloc.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "frame_set.h"
#include "framing.h"
#include "ksalloc.h"

#ifndef KS_JEMALLOC_DEFAULT_FRAME_BYTES
#define KS_JEMALLOC_DEFAULT_FRAME_BYTES 4096u
#endif
#ifndef KS_JEMALLOC_MAX_FRAME_BYTES
#define KS_JEMALLOC_MAX_FRAME_BYTES ((size_t)256 << 20)
#endif
#ifndef KS_JEMALLOC_MAX_ALIGN_BYTES
#define KS_JEMALLOC_MAX_ALIGN_BYTES ((size_t)1 << 20)
#endif

/* The family name under which instances share a heap's arena. */
#define JEMALLOC_HEAP_FAMILY "jemalloc"

_Static_assert((KS_JEMALLOC_MAX_ALIGN_BYTES & (KS_JEMALLOC_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(KS_JEMALLOC_MAX_ALIGN_BYTES <= INT_MAX, "MALLOCX_ALIGN takes the int branch");
_Static_assert(KS_JEMALLOC_DEFAULT_FRAME_BYTES <= KS_JEMALLOC_MAX_FRAME_BYTES, "default frame within the limit");
_Static_assert(KS_JEMALLOC_MAX_FRAME_BYTES <= ULONG_MAX, "FrameSize is a ULONG");

/* ---- Arenas and tcaches --------------------------------------------------------------------- */

static bool jemalloc_arena_create(unsigned *arena_index)
{
    size_t index_bytes = sizeof *arena_index;
    return mallctl("arenas.create", arena_index, &index_bytes, NULL, 0) == 0;
}

/* Discards every allocation still in the arena. Every tcache that touched it is flushed first. */
static void jemalloc_arena_destroy(unsigned arena_index)
{
    char name[64];
    snprintf(name, sizeof name, "arena.%u.destroy", arena_index);
    (void)mallctl(name, NULL, NULL, NULL, 0); /* fails only for an arena bound by thread.arena: never here */
}

/* The shared state of a heap's jemalloc instances: one arena. */
typedef struct jemalloc_shared_arena {
    unsigned arena_index;
} jemalloc_shared_arena;

static NTSTATUS jemalloc_shared_create(ks_heap *heap, void *arg, void **state)
{
    (void)heap;
    (void)arg;
    jemalloc_shared_arena *shared = malloc(sizeof *shared);
    if (shared == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (!jemalloc_arena_create(&shared->arena_index)) {
        free(shared);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    *state = shared;
    return STATUS_SUCCESS;
}

static void jemalloc_shared_destroy(ks_heap *heap, void *state)
{
    (void)heap;
    jemalloc_shared_arena *shared = state;
    jemalloc_arena_destroy(shared->arena_index);
    free(shared);
}

static size_t jemalloc_arena_stat(unsigned arena_index, const char *stat)
{
    char name[96];
    size_t value = 0, value_bytes = sizeof value;
    snprintf(name, sizeof name, "stats.arenas.%u.%s", arena_index, stat);
    return mallctl(name, &value, &value_bytes, NULL, 0) == 0 ? value : 0;
}

/* Statistics are snapshots taken at the last "epoch" write; refresh before reading them. */
static void jemalloc_refresh_stats(void)
{
    uint64_t epoch = 1;
    size_t epoch_bytes = sizeof epoch;
    (void)mallctl("epoch", &epoch, &epoch_bytes, &epoch, epoch_bytes);
}

static size_t jemalloc_page_bytes(void)
{
    size_t page_bytes = 0, value_bytes = sizeof page_bytes;
    return mallctl("arenas.page", &page_bytes, &value_bytes, NULL, 0) == 0 ? page_bytes : 4096;
}

/* ---- The instance --------------------------------------------------------------------------- */

typedef struct jemalloc_instance {
    int flags;           /* first: the fast path reads it, frame_bytes and (shared) the set */
    size_t frame_bytes;
    ks_heap *heap;       /* the shared heap, or NULL for a private arena */
    uint64_t frames_live;
    ks_frame_set live;   /* shared mode only: frames to free at DeleteAllocator */
    size_t usable_bytes; /* the size class a frame really occupies */
    size_t align_bytes;
    unsigned arena_index;
    unsigned tcache_index;
    bool has_tcache;
} jemalloc_instance;

static const ks_framing_rules jemalloc_framing_rules = {
    .default_frames = 0, /* Frames is not a bound: 0 stays 0 */
    .default_frame_bytes = KS_JEMALLOC_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = KS_JEMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = KS_JEMALLOC_MAX_ALIGN_BYTES,
    .min_align_bytes = 1, /* MALLOCX_ALIGN(1) is no constraint */
};

/* Joins the heap's shared arena (with a live-frame set), or creates a private one. */
static NTSTATUS jemalloc_open_arena(jemalloc_instance *instance, const KSPIN *pin)
{
    if (pin == NULL || pin->heap == NULL)
        return jemalloc_arena_create(&instance->arena_index) ? STATUS_SUCCESS : STATUS_INSUFFICIENT_RESOURCES;
    if (!ks_frame_set_init(&instance->live, KS_FRAME_SET_MIN_CAPACITY))
        return STATUS_INSUFFICIENT_RESOURCES;
    void *state = NULL;
    NTSTATUS status = pin->heap->attach(pin->heap, JEMALLOC_HEAP_FAMILY, jemalloc_shared_create, NULL, &state);
    if (!NT_SUCCESS(status)) {
        ks_frame_set_destroy(&instance->live);
        return status;
    }
    instance->heap = pin->heap;
    instance->arena_index = ((const jemalloc_shared_arena *)state)->arena_index;
    return STATUS_SUCCESS;
}

static void jemalloc_close_arena(jemalloc_instance *instance)
{
    if (instance->heap == NULL) {
        jemalloc_arena_destroy(instance->arena_index);
        return;
    }
    ks_frame_set_destroy(&instance->live);
    instance->heap->detach(instance->heap, JEMALLOC_HEAP_FAMILY, jemalloc_shared_destroy);
}

static NTSTATUS jemalloc_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &jemalloc_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    jemalloc_instance *instance = calloc(1, sizeof *instance);
    if (instance == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    status = jemalloc_open_arena(instance, initial_context);
    if (!NT_SUCCESS(status)) {
        free(instance);
        return status;
    }
    size_t index_bytes = sizeof instance->tcache_index;
    instance->has_tcache = mallctl("tcache.create", &instance->tcache_index, &index_bytes, NULL, 0) == 0 &&
                           index_bytes == sizeof instance->tcache_index;
    ks_framing_write_back(framing, &settled);
    instance->frame_bytes = settled.frame_bytes;
    instance->align_bytes = settled.align_bytes;
    int placement = MALLOCX_ALIGN(instance->align_bytes) | MALLOCX_ARENA(instance->arena_index);
    instance->usable_bytes = nallocx(instance->frame_bytes, placement);
    instance->flags =
        placement | (instance->has_tcache ? MALLOCX_TCACHE(instance->tcache_index) : MALLOCX_TCACHE_NONE);
    *context = instance;
    return STATUS_SUCCESS;
}

static void jemalloc_delete(PVOID context)
{
    jemalloc_instance *instance = context;
    size_t cursor = 0; /* a private arena tracks nothing: its destroy discards live frames by itself */
    for (void *frame; (frame = ks_frame_set_next(&instance->live, &cursor)) != NULL;)
        sdallocx(frame, instance->frame_bytes, instance->flags);
    if (instance->has_tcache) /* flushes it: required before the arena may be destroyed */
        (void)mallctl("tcache.destroy", NULL, NULL, &instance->tcache_index, sizeof instance->tcache_index);
    jemalloc_close_arena(instance);
    free(instance);
}

static PVOID jemalloc_allocate(PVOID context)
{
    jemalloc_instance *instance = context;
    void *frame = mallocx(instance->frame_bytes, instance->flags);
    if (frame == NULL)
        return NULL;
    if (instance->heap != NULL && !ks_frame_set_insert(&instance->live, frame)) {
        sdallocx(frame, instance->frame_bytes, instance->flags); /* untracked, it could not be released */
        return NULL;
    }
    instance->frames_live++;
    return frame;
}

static void jemalloc_free(PVOID context, PVOID buffer)
{
    jemalloc_instance *instance = context;
    if (instance->heap != NULL && !ks_frame_set_release(&instance->live, buffer))
        return; /* shared mode only: not live here, ignored, reported by self_check */
    instance->frames_live--;
    sdallocx(buffer, instance->frame_bytes, instance->flags);
}

/* Shared mode: every tracked frame belongs to the shared arena and is a full frame. */
static bool jemalloc_check_tracked(const jemalloc_instance *instance, char *why, size_t why_bytes)
{
    if (!ks_frame_set_check(&instance->live, instance->align_bytes, "jemalloc", why, why_bytes))
        return false;
    if (instance->live.count != instance->frames_live) {
        snprintf(why, why_bytes, "jemalloc: %zu frames tracked but frames_live is %llu", instance->live.count,
                 (unsigned long long)instance->frames_live);
        return false;
    }
    size_t cursor = 0;
    for (void *frame; (frame = ks_frame_set_next(&instance->live, &cursor)) != NULL;) {
        unsigned owner = UINT_MAX;
        size_t owner_bytes = sizeof owner;
        if (mallctl("arenas.lookup", &owner, &owner_bytes, &frame, sizeof frame) != 0 ||
            owner != instance->arena_index || sallocx(frame, 0) < instance->frame_bytes) {
            snprintf(why, why_bytes, "jemalloc: live frame %p belongs to arena %u (expected %u) with %zu bytes",
                     frame, owner, instance->arena_index, sallocx(frame, 0));
            return false;
        }
    }
    return true;
}

static NTSTATUS jemalloc_self_check(PVOID context, char *why, size_t why_bytes)
{
    const jemalloc_instance *instance = context;
    if (instance->heap != NULL)
        return jemalloc_check_tracked(instance, why, why_bytes) ? STATUS_SUCCESS : STATUS_DATA_ERROR;
    /* Private arena: nothing is tracked, but the live frames (and any the tcache holds) are in
     * its active pages, so fewer active bytes than live frames means frames came from elsewhere
     * or frames_live drifted. */
    jemalloc_refresh_stats();
    uint64_t active_bytes = (uint64_t)jemalloc_arena_stat(instance->arena_index, "pactive") * jemalloc_page_bytes();
    if (active_bytes < instance->frames_live * instance->usable_bytes) {
        snprintf(why, why_bytes, "jemalloc: arena %u has %llu active bytes, fewer than %llu live frames of %zu",
                 instance->arena_index, (unsigned long long)active_bytes,
                 (unsigned long long)instance->frames_live, instance->usable_bytes);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static size_t jemalloc_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const jemalloc_instance *instance = context;
    jemalloc_refresh_stats();
    uint64_t arena_mapped_bytes = jemalloc_arena_stat(instance->arena_index, "mapped");
    uint64_t arena_active_bytes =
        (uint64_t)jemalloc_arena_stat(instance->arena_index, "pactive") * jemalloc_page_bytes();
    uint64_t tracking_bytes = ks_frame_set_table_bytes(&instance->live); /* 0 for a private arena */
    /* "mapped" needs a jemalloc built with --enable-stats; active pages are the floor without it. */
    uint64_t private_bytes = arena_mapped_bytes ? arena_mapped_bytes : arena_active_bytes;
    uint64_t reserved_bytes =
        instance->heap ? instance->frames_live * instance->usable_bytes + tracking_bytes : private_bytes;
    const ks_counter counters[] = {
        {"frames_live", instance->frames_live},
        {"reserved_bytes", reserved_bytes},
        {"usable_frame_bytes", instance->usable_bytes},
        {"arena", instance->arena_index},
        {"arena_active_bytes", arena_active_bytes},
        {"arena_mapped_bytes", arena_mapped_bytes},
        {"explicit_tcache", instance->has_tcache},
        {"bad_frees", instance->live.foreign_releases},
    };
    size_t count = 0;
    for (; count < sizeof counters / sizeof counters[0] && count < max_counters; count++)
        out[count] = counters[count];
    return count;
}

static const KSALLOCATOR_DISPATCH jemalloc_dispatch = {
    .InitializeAllocator = jemalloc_initialize,
    .DeleteAllocator = jemalloc_delete,
    .Allocate = jemalloc_allocate,
    .Free = jemalloc_free,
};

const ks_allocator_entry ks_allocator_jemalloc = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "jemalloc",
    .description = "jemalloc 5 mallocx/sdallocx on an arena per instance (one per shared heap), explicit tcache",
    .caps = KS_CAP_SHARED_HEAP | KS_CAP_ANY_SIZE,
    .max_frame_bytes = KS_JEMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = KS_JEMALLOC_MAX_ALIGN_BYTES,
    .dispatch = &jemalloc_dispatch,
    .self_check = jemalloc_self_check,
    .counters = jemalloc_counters,
};
