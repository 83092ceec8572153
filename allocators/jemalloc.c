/*
 * jemalloc.c -- `jemalloc`: jemalloc 5's mallocx/sdallocx on an arena of the instance's own.
 *
 * Design: every instance draws from an arena that no other instance uses while it lives. Every
 * call passes MALLOCX_ALIGN(FileAlignment + 1) | MALLOCX_ARENA(arena) and a tcache flag; sdallocx
 * gets the size and the same flags, so jemalloc never looks the size up. FrameSize 0 becomes
 * 4096, written back; Frames is not a bound (0 stays 0). DeleteAllocator discards every frame
 * still live in one step with "arena.<i>.reset".
 *
 * The idle set. An arena is not destroyed at DeleteAllocator but reset and parked, and
 * InitializeAllocator takes the most recently parked one before it creates any. For a
 * short-lived instance (a fuzzer creates and deletes instances for every input) that is the
 * difference: "arenas.create" maps the arena's metadata and then every extent afresh, page fault
 * by page fault, and "arena.<i>.destroy" purges and unmaps all of it again, with a TLB shootdown
 * per madvise/munmap -- measured with jemalloc 5.3 on x86-64, about 850 us for an arena that
 * served twenty 64 KiB frames, against 7 us for the reset. Reset, per jemalloc(3), discards
 * all of the arena's allocations (large extents and small slabs) but keeps the arena, its
 * metadata and its pages: they become the arena's dirty extents, which the next instance reuses
 * with no system call and no page fault, and which jemalloc's decay (opt.dirty_decay_ms, left
 * at its default) purges as usual while the arena is in use. What holds:
 *  - no sharing: an arena is held by exactly one instance (or one shared heap) or parked, never
 *    both; it is parked after its reset and taken under the idle set's lock, so a new instance's
 *    frame never comes from memory another instance can still reach;
 *  - a parked arena holds no allocation: the reset leaves it no active page (the tests read
 *    "stats.arenas.<i>.pactive" and its small and large "allocated");
 *  - bounds: at most KS_JEMALLOC_IDLE_ARENAS are parked (one more is destroyed, as before), and
 *    an arena that may hold more than KS_JEMALLOC_IDLE_ARENA_MAX_BYTES is purged
 *    ("arena.<i>.purge": its pages go back to the system, its address space stays retained)
 *    before it is parked. That figure is an estimate carried with the arena -- the largest peak
 *    of live frame bytes of any instance since its last purge, summed over the instances of a
 *    shared heap -- because the exact one ("stats.arenas.<i>.pdirty") needs an "epoch" refresh,
 *    which merges the statistics of every arena (about 6 us each) and would cost more than the
 *    reuse saves. Parked arenas cannot decay: decay runs on an arena's own allocations;
 *  - release: ks_jemalloc_idle_trim() destroys every parked arena, for a program or a
 *    benchmark that wants the memory back.
 * The cap is small on purpose: every arena that exists, parked or not, adds to the cost of an
 * "epoch" refresh, which counters() pays.
 *
 * The tcache decision. jemalloc's automatic per-thread tcache must not be used: its bins are
 * per size class, not per arena, so an automatic tcache would hand this instance frames of other
 * arenas and keep frames of this arena cached after the arena is reset (jemalloc requires every
 * tcache that touched an arena to be flushed before arena.<i>.reset or .destroy). That leaves two
 * choices: MALLOCX_TCACHE_NONE, where every Allocate and Free takes the arena's bin or extent
 * mutex (thread-safe; measured with jemalloc 5.3 on x86-64, 90 to 175 ns per op for frames of
 * 64 B to 4 KiB against about 20 ns with a tcache, and the same cost either way above
 * opt.tcache_max, 32 KiB by default, where no tcache is used), or one explicit tcache per
 * instance ("tcache.create"), which keeps jemalloc's real fast path (a lock-free pop from a
 * thread cache) but may be used by one thread at a time. The dispatch contract already says an
 * instance without KS_CAP_THREAD_SAFE is driven by one thread at a time, which is exactly the
 * tcache's rule, and it is the jemalloc that users measure in production; so the entry does NOT
 * claim KS_CAP_THREAD_SAFE and an instance gets an explicit tcache -- but only at its
 * KS_JEMALLOC_TCACHE_AFTER_ALLOCS-th Allocate, before which it runs on MALLOCX_TCACHE_NONE. An
 * explicit tcache costs about 55 us to create and destroy (its bin stacks are a zeroed 32 KiB
 * allocation: a madvise to zero it, page faults to touch it), which the tcache earns back at
 * some 100 ns a call only after a few hundred calls; and it cannot be parked with the arena, as
 * jemalloc 5's "tcache.flush" of an explicit tcache destroys it and creates it again on next use.
 * Frames allocated before the switch are freed through the tcache, which is fine: they are of
 * the same arena. If jemalloc has no explicit tcache left (it has 4093), the instance stays on
 * MALLOCX_TCACHE_NONE; counters say which. The tcache is destroyed (flushed) before the reset.
 *
 * Shared heap (KS_CAP_SHARED_HEAP | KS_CAP_ANY_SIZE): when the pin has a heap, all jemalloc
 * instances on it share one arena, taken by the first heap->attach("jemalloc") and reset and
 * parked by the last detach; the heap's mmap'ed region itself is not used, the arena is the
 * shared pool. Pins of any FrameSize may share it. An arena shared by live instances cannot be
 * reset to drop one instance's frames, so in this mode the instance tracks its live frames
 * in a hash set beside them (frame_set.c) and frees them one by one at DeleteAllocator; the set also turns a
 * Free of a frame that is not live into a counted no-op. Private instances track nothing.
 *
 * Complexity: Allocate and Free are jemalloc's: O(1) tcache pop/push on a hit, an arena refill
 * or flush (amortised over a batch) on a miss, a bin lock before the tcache starts; large frames
 * (above opt.tcache_max) go to the arena's extent allocator. Shared mode adds an expected O(1)
 * set operation.
 *
 * Complexity of the lifetime: InitializeAllocator takes a parked arena (a lock and a pop) or
 * creates one (mostly mmap work); DeleteAllocator resets it, work in proportion to the slabs and
 * large extents it holds, with no system call unless the arena is purged (over the byte cap) or
 * destroyed (the idle set full).
 *
 * Memory: jemalloc's size-class rounding (four classes per doubling, so up to 25% over FrameSize
 * once past 128 bytes, more for tiny frames: 17 bytes take 32; an alignment above 16 rounds a
 * small frame up to a multiple of it) and its arena metadata; the explicit tcache holds freed
 * small frames until it fills or is flushed. Shared mode adds 16 to 32 bytes per live frame of
 * set table. Parked arenas keep up to about KS_JEMALLOC_IDLE_ARENAS *
 * KS_JEMALLOC_IDLE_ARENA_MAX_BYTES resident (64 MiB by default), plus their metadata and
 * retained address space. counters: reserved_bytes is the private arena's mapped bytes
 * ("stats.arenas.<i>.mapped" after an "epoch" refresh; for a reused arena it includes what
 * earlier users left mapped), or in shared mode this instance's share, frames_live * usable
 * frame size, since the arena is the shared heap.
 *
 * self_check of a private instance compares the arena's active pages with its live frames. It
 * reads jemalloc's live page counter -- the figure "stats.arenas.<i>.pactive" snapshots --
 * through "experimental.arenas.<i>.pactivep", an undocumented experimental mallctl that jemalloc
 * 5.3 has, and falls back to an "epoch" refresh where that is missing: a refresh, which every
 * existing arena makes dearer, ran every 16 ops in the fuzzers.
 *
 * Thread safety: not thread-safe per instance (the explicit tcache). Different instances may run
 * on different threads at once, also on one shared arena: jemalloc locks its arenas, the idle
 * set is under one mutex (the mallctl calls run outside it), and attach/detach are thread-safe.
 * A frame used after its instance's DeleteAllocator now reads or writes a parked arena's pages,
 * or the next instance's frames, where with a destroyed arena it would mostly have faulted on an
 * unmapped page; nothing in the contract allows that use.
 */
#include <jemalloc/jemalloc.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "frame_set.h"
#include "framing.h"
#include "jemalloc_idle.h"
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
/* Arenas reset and kept for the next instances; 0 destroys every arena at DeleteAllocator. */
#ifndef KS_JEMALLOC_IDLE_ARENAS
#define KS_JEMALLOC_IDLE_ARENAS 8u
#endif
/* A parked arena whose pages may exceed this is purged first (estimate: see the top comment). */
#ifndef KS_JEMALLOC_IDLE_ARENA_MAX_BYTES
#define KS_JEMALLOC_IDLE_ARENA_MAX_BYTES ((size_t)8 << 20)
#endif
/* Allocations an instance makes without a tcache before it creates one; 0: from the start. */
#ifndef KS_JEMALLOC_TCACHE_AFTER_ALLOCS
#define KS_JEMALLOC_TCACHE_AFTER_ALLOCS 256u
#endif

/* The family name under which instances share a heap's arena. */
#define JEMALLOC_HEAP_FAMILY "jemalloc"

_Static_assert((KS_JEMALLOC_MAX_ALIGN_BYTES & (KS_JEMALLOC_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(KS_JEMALLOC_MAX_ALIGN_BYTES <= INT_MAX, "MALLOCX_ALIGN takes the int branch");
_Static_assert(KS_JEMALLOC_DEFAULT_FRAME_BYTES <= KS_JEMALLOC_MAX_FRAME_BYTES, "default frame within the limit");
_Static_assert(KS_JEMALLOC_MAX_FRAME_BYTES <= ULONG_MAX, "FrameSize is a ULONG");
_Static_assert(KS_JEMALLOC_IDLE_ARENAS <= 64, "the idle set is copied on the stack: keep it small");


/* ---- Statistics ----------------------------------------------------------------------------- */

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

/* Names looked up once: jemalloc parses a mallctl name on every call (string compares down its
 * ctl tree), and the shared-mode self-check asks "arenas.lookup" for every live frame -- under
 * ASan the intercepted strncmp of that parse was 8% of fuzz_alloc_jemalloc. jemalloc's manual
 * gives mallctlnametomib + mallctlbymib for repeated queries; "arenas.page" is a constant. */
static pthread_once_t ctl_once = PTHREAD_ONCE_INIT;
static size_t ctl_page_bytes = 4096;
static size_t ctl_lookup_mib[2];
static size_t ctl_lookup_mib_length; /* 0: the lookup could not be resolved; by name instead */

static void jemalloc_ctl_init(void)
{
    size_t page_bytes = 0, value_bytes = sizeof page_bytes;
    if (mallctl("arenas.page", &page_bytes, &value_bytes, NULL, 0) == 0 && page_bytes != 0)
        ctl_page_bytes = page_bytes;
    size_t length = sizeof ctl_lookup_mib / sizeof ctl_lookup_mib[0];
    if (mallctlnametomib("arenas.lookup", ctl_lookup_mib, &length) == 0)
        ctl_lookup_mib_length = length;
}

static size_t jemalloc_page_bytes(void)
{
    pthread_once(&ctl_once, jemalloc_ctl_init);
    return ctl_page_bytes;
}

/* The arena index that owns frame, through "arenas.lookup"; false if jemalloc does not know it. */
static bool jemalloc_arena_of(void *frame, unsigned *owner)
{
    pthread_once(&ctl_once, jemalloc_ctl_init);
    size_t owner_bytes = sizeof *owner;
    if (ctl_lookup_mib_length == 0)
        return mallctl("arenas.lookup", owner, &owner_bytes, &frame, sizeof frame) == 0;
    return mallctlbymib(ctl_lookup_mib, ctl_lookup_mib_length, owner, &owner_bytes, &frame, sizeof frame) == 0;
}

/* ---- Arenas --------------------------------------------------------------------------------- */

/* An arena as it passes from instance (or shared heap) to the idle set and back. */
typedef struct jemalloc_arena {
    unsigned index;
    const size_t *active_pages; /* jemalloc's live page counter, or NULL (see jemalloc_arena_active_pages) */
    size_t dirty_bytes_estimate; /* what it may keep resident after a reset: see the top comment */
    bool reused;                /* taken from the idle set rather than created */
} jemalloc_arena;

/* Runs "arena.<index>.<verb>" (reset, purge, destroy); true on success. */
static bool jemalloc_arena_ctl(unsigned arena_index, const char *verb)
{
    char name[64];
    snprintf(name, sizeof name, "arena.%u.%s", arena_index, verb);
    return mallctl(name, NULL, NULL, NULL, 0) == 0;
}

/* The arena's live count of active pages, which jemalloc exposes for reading without an "epoch"
 * refresh; NULL if this jemalloc does not (built without stats, or without the mallctl). The counter
 * lives in the arena, so the pointer holds until the arena is destroyed. jemalloc answers only
 * for an arena that an "epoch" refresh has seen, hence the refresh, paid once per arena created. */
static const size_t *jemalloc_arena_active_pages(unsigned arena_index)
{
    jemalloc_refresh_stats();
    char name[64];
    size_t *active_pages = NULL, pointer_bytes = sizeof active_pages;
    snprintf(name, sizeof name, "experimental.arenas.%u.pactivep", arena_index);
    return mallctl(name, &active_pages, &pointer_bytes, NULL, 0) == 0 ? active_pages : NULL;
}

/* A variable, not the macro, so that KS_JEMALLOC_IDLE_ARENAS 0 compiles without -Wtype-limits. */
static const unsigned idle_arenas_max = KS_JEMALLOC_IDLE_ARENAS;
static pthread_mutex_t idle_lock = PTHREAD_MUTEX_INITIALIZER;
static jemalloc_arena idle_arenas[KS_JEMALLOC_IDLE_ARENAS + 1]; /* parked, most recent last; +1: never 0-sized */
static unsigned idle_arena_count;

/* The most recently parked arena (its pages are the likeliest to be resident), or a new one. */
static bool jemalloc_arena_take(jemalloc_arena *arena)
{
    pthread_mutex_lock(&idle_lock);
    bool found = idle_arena_count > 0;
    if (found)
        *arena = idle_arenas[--idle_arena_count];
    pthread_mutex_unlock(&idle_lock);
    if (found) {
        arena->reused = true;
        return true;
    }
    size_t index_bytes = sizeof arena->index;
    if (mallctl("arenas.create", &arena->index, &index_bytes, NULL, 0) != 0)
        return false;
    arena->active_pages = jemalloc_arena_active_pages(arena->index);
    arena->dirty_bytes_estimate = 0;
    arena->reused = false;
    return true;
}

/* Discards every allocation in the arena and parks it, or destroys it when the idle set is full.
 * Every tcache that touched the arena has been flushed (jemalloc's rule for reset and destroy). */
static void jemalloc_arena_give_back(jemalloc_arena arena)
{
    /* Fails only for an arena jemalloc did not create through arenas.create: never here. */
    bool emptied = jemalloc_arena_ctl(arena.index, "reset");
    if (emptied && arena.dirty_bytes_estimate > KS_JEMALLOC_IDLE_ARENA_MAX_BYTES) {
        (void)jemalloc_arena_ctl(arena.index, "purge"); /* a failed purge leaves pages, not frames */
        arena.dirty_bytes_estimate = 0;
    }
    bool parked = false;
    pthread_mutex_lock(&idle_lock);
    if (emptied && idle_arena_count < idle_arenas_max) {
        idle_arenas[idle_arena_count++] = arena;
        parked = true;
    }
    pthread_mutex_unlock(&idle_lock);
    if (!parked) /* fails only for an arena bound by thread.arena: never here */
        (void)jemalloc_arena_ctl(arena.index, "destroy");
}

unsigned ks_jemalloc_idle_trim(void)
{
    jemalloc_arena arenas[KS_JEMALLOC_IDLE_ARENAS + 1];
    pthread_mutex_lock(&idle_lock);
    unsigned arena_count = idle_arena_count;
    for (unsigned index = 0; index < arena_count; index++)
        arenas[index] = idle_arenas[index];
    idle_arena_count = 0;
    pthread_mutex_unlock(&idle_lock);
    for (unsigned index = 0; index < arena_count; index++)
        (void)jemalloc_arena_ctl(arenas[index].index, "destroy");
    return arena_count;
}

/* ---- The shared heap's arena ---------------------------------------------------------------- */

/* The shared state of a heap's jemalloc instances: one arena, and the sum of its instances' peak
 * live bytes, which each adds as it leaves (they may leave from different threads). */
typedef struct jemalloc_shared_arena {
    jemalloc_arena arena;
    atomic_size_t peak_bytes_sum;
} jemalloc_shared_arena;

static NTSTATUS jemalloc_shared_create(ks_heap *heap, void *arg, void **state)
{
    (void)heap;
    (void)arg;
    jemalloc_shared_arena *shared = malloc(sizeof *shared);
    if (shared == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (!jemalloc_arena_take(&shared->arena)) {
        free(shared);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    atomic_init(&shared->peak_bytes_sum, 0);
    *state = shared;
    return STATUS_SUCCESS;
}

static void jemalloc_shared_destroy(ks_heap *heap, void *state)
{
    (void)heap;
    jemalloc_shared_arena *shared = state;
    size_t peak_bytes_sum = atomic_load(&shared->peak_bytes_sum);
    if (peak_bytes_sum > shared->arena.dirty_bytes_estimate)
        shared->arena.dirty_bytes_estimate = peak_bytes_sum;
    jemalloc_arena_give_back(shared->arena);
    free(shared);
}

/* ---- The instance --------------------------------------------------------------------------- */

typedef struct jemalloc_instance {
    int flags;           /* first: the fast path reads it, frame_bytes and (shared) the set */
    size_t frame_bytes;
    ks_heap *heap;       /* the shared heap, or NULL for a private arena */
    uint64_t frames_live;
    uint64_t frames_peak; /* the most frames live at once: for the arena's dirty_bytes_estimate */
    ks_frame_set live;   /* shared mode only: frames to free at DeleteAllocator */
    size_t usable_bytes; /* the size class a frame really occupies */
    size_t align_bytes;
    jemalloc_arena arena; /* private: the instance's; shared: a copy of the heap's, read-only */
    jemalloc_shared_arena *shared; /* shared mode only */
    unsigned allocs_before_tcache; /* counts down to the explicit tcache; 0 once it is decided */
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

/* Joins the heap's shared arena (with a live-frame set), or takes a private one. */
static NTSTATUS jemalloc_open_arena(jemalloc_instance *instance, const KSPIN *pin)
{
    if (pin == NULL || pin->heap == NULL)
        return jemalloc_arena_take(&instance->arena) ? STATUS_SUCCESS : STATUS_INSUFFICIENT_RESOURCES;
    if (!ks_frame_set_init(&instance->live, KS_FRAME_SET_MIN_CAPACITY))
        return STATUS_INSUFFICIENT_RESOURCES;
    void *state = NULL;
    NTSTATUS status = pin->heap->attach(pin->heap, JEMALLOC_HEAP_FAMILY, jemalloc_shared_create, NULL, &state);
    if (!NT_SUCCESS(status)) {
        ks_frame_set_destroy(&instance->live);
        return status;
    }
    instance->heap = pin->heap;
    instance->shared = state;
    instance->arena = instance->shared->arena;
    return STATUS_SUCCESS;
}

/* Every tcache that touched the arena is flushed by now. */
static void jemalloc_close_arena(jemalloc_instance *instance)
{
    size_t peak_bytes = instance->frames_peak * instance->usable_bytes;
    if (instance->heap == NULL) {
        if (peak_bytes > instance->arena.dirty_bytes_estimate)
            instance->arena.dirty_bytes_estimate = peak_bytes;
        jemalloc_arena_give_back(instance->arena);
        return;
    }
    atomic_fetch_add(&instance->shared->peak_bytes_sum, peak_bytes);
    ks_frame_set_destroy(&instance->live);
    instance->heap->detach(instance->heap, JEMALLOC_HEAP_FAMILY, jemalloc_shared_destroy);
}

/* The flags that say where a frame comes from: alignment and arena. */
static int jemalloc_placement(const jemalloc_instance *instance)
{
    return MALLOCX_ALIGN(instance->align_bytes) | MALLOCX_ARENA(instance->arena.index);
}

/* From here on Allocate and Free go through an explicit tcache of the instance's own; frames
 * allocated before are freed through it too, which is fine: they are of the same arena. If
 * jemalloc has no explicit tcache left, the instance stays on MALLOCX_TCACHE_NONE. */
static void jemalloc_start_tcache(jemalloc_instance *instance)
{
    size_t index_bytes = sizeof instance->tcache_index;
    instance->allocs_before_tcache = 0;
    instance->has_tcache = mallctl("tcache.create", &instance->tcache_index, &index_bytes, NULL, 0) == 0 &&
                           index_bytes == sizeof instance->tcache_index;
    if (instance->has_tcache)
        instance->flags = jemalloc_placement(instance) | MALLOCX_TCACHE(instance->tcache_index);
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
    ks_framing_write_back(framing, &settled);
    instance->frame_bytes = settled.frame_bytes;
    instance->align_bytes = settled.align_bytes;
    instance->usable_bytes = nallocx(instance->frame_bytes, jemalloc_placement(instance));
    instance->flags = jemalloc_placement(instance) | MALLOCX_TCACHE_NONE;
    instance->allocs_before_tcache = KS_JEMALLOC_TCACHE_AFTER_ALLOCS;
    if (instance->allocs_before_tcache == 0)
        jemalloc_start_tcache(instance);
    *context = instance;
    return STATUS_SUCCESS;
}

static void jemalloc_delete(PVOID context)
{
    jemalloc_instance *instance = context;
    size_t cursor = 0; /* a private arena tracks nothing: its reset discards live frames by itself */
    for (void *frame; (frame = ks_frame_set_next(&instance->live, &cursor)) != NULL;)
        sdallocx(frame, instance->frame_bytes, instance->flags);
    if (instance->has_tcache) /* flushes it: required before the arena may be reset */
        (void)mallctl("tcache.destroy", NULL, NULL, &instance->tcache_index, sizeof instance->tcache_index);
    jemalloc_close_arena(instance);
    free(instance);
}

static PVOID jemalloc_allocate(PVOID context)
{
    jemalloc_instance *instance = context;
    if (instance->allocs_before_tcache != 0 && --instance->allocs_before_tcache == 0)
        jemalloc_start_tcache(instance);
    void *frame = mallocx(instance->frame_bytes, instance->flags);
    if (frame == NULL)
        return NULL;
    if (instance->heap != NULL && !ks_frame_set_insert(&instance->live, frame)) {
        sdallocx(frame, instance->frame_bytes, instance->flags); /* untracked, it could not be released */
        return NULL;
    }
    if (++instance->frames_live > instance->frames_peak)
        instance->frames_peak = instance->frames_live;
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
        if (!jemalloc_arena_of(frame, &owner) || owner != instance->arena.index || sallocx(frame, 0) < instance->frame_bytes) {
            snprintf(why, why_bytes, "jemalloc: live frame %p belongs to arena %u (expected %u) with %zu bytes",
                     frame, owner, instance->arena.index, sallocx(frame, 0));
            return false;
        }
    }
    return true;
}

/* The arena's active pages now: jemalloc's live counter, or the last snapshot after a refresh. */
static uint64_t jemalloc_arena_active_bytes(const jemalloc_arena *arena)
{
    if (arena->active_pages != NULL)
        return (uint64_t)__atomic_load_n(arena->active_pages, __ATOMIC_RELAXED) * jemalloc_page_bytes();
    jemalloc_refresh_stats();
    return (uint64_t)jemalloc_arena_stat(arena->index, "pactive") * jemalloc_page_bytes();
}

static NTSTATUS jemalloc_self_check(PVOID context, char *why, size_t why_bytes)
{
    const jemalloc_instance *instance = context;
    if (instance->heap != NULL)
        return jemalloc_check_tracked(instance, why, why_bytes) ? STATUS_SUCCESS : STATUS_DATA_ERROR;
    /* Private arena: nothing is tracked, but the live frames (and any the tcache holds) are in
     * its active pages, so fewer active bytes than live frames means frames came from elsewhere
     * or frames_live drifted. A reused arena starts with none: its reset returned them all. */
    uint64_t active_bytes = jemalloc_arena_active_bytes(&instance->arena);
    if (active_bytes < instance->frames_live * instance->usable_bytes) {
        snprintf(why, why_bytes, "jemalloc: arena %u has %llu active bytes, fewer than %llu live frames of %zu",
                 instance->arena.index, (unsigned long long)active_bytes,
                 (unsigned long long)instance->frames_live, instance->usable_bytes);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static size_t jemalloc_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const jemalloc_instance *instance = context;
    unsigned arena_index = instance->arena.index;
    jemalloc_refresh_stats();
    uint64_t arena_mapped_bytes = jemalloc_arena_stat(arena_index, "mapped");
    uint64_t arena_active_bytes = (uint64_t)jemalloc_arena_stat(arena_index, "pactive") * jemalloc_page_bytes();
    uint64_t tracking_bytes = ks_frame_set_table_bytes(&instance->live); /* 0 for a private arena */
    /* "mapped" needs a jemalloc built with --enable-stats; active pages are the floor without it. */
    uint64_t private_bytes = arena_mapped_bytes ? arena_mapped_bytes : arena_active_bytes;
    uint64_t reserved_bytes =
        instance->heap ? instance->frames_live * instance->usable_bytes + tracking_bytes : private_bytes;
    const ks_counter counters[] = {
        {"frames_live", instance->frames_live},
        {"reserved_bytes", reserved_bytes},
        {"usable_frame_bytes", instance->usable_bytes},
        {"arena", arena_index},
        {"arena_reused", instance->arena.reused},
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
    .description = "jemalloc 5 mallocx/sdallocx on an arena per instance (one per shared heap, reset and reused), "
                   "explicit tcache",
    .caps = KS_CAP_SHARED_HEAP | KS_CAP_ANY_SIZE,
    .max_frame_bytes = KS_JEMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = KS_JEMALLOC_MAX_ALIGN_BYTES,
    .dispatch = &jemalloc_dispatch,
    .self_check = jemalloc_self_check,
    .counters = jemalloc_counters,
};
