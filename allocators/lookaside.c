/*
 * lookaside.c -- `lookaside`: what the stock KS allocator does, a bounded-depth lookaside list of
 * FrameSize buffers in front of the process heap, with at most Frames frames live.
 *
 * Design: a freed frame goes onto the lookaside list (a stack of at most `depth` frames) instead
 * of back to the heap, and the next Allocate takes it from there: a hit. With the list empty,
 * Allocate asks the heap (posix_memalign): a miss. With the list full, Free returns the frame
 * to the heap. Past Frames live frames Allocate returns NULL (a refusal), as KS fails an
 * allocation past the framing's frame count; Frames == 0 means no bound and stays 0. Depth is
 * min(Frames, 64), or 16 when Frames is 0: deep enough to absorb a pin's steady-state churn,
 * shallow enough that an idle pin holds little. With KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE and
 * Frames != 0 the pin is promised Frames frames, so the list is made Frames deep and filled at
 * initialisation (those heap allocations are not counted as misses); every Allocate then hits.
 * FrameSize 0 becomes 4096, written back. posix_memalign, not aligned_alloc: C11's
 * aligned_alloc wants the size to be a multiple of the alignment (ASan enforces it), which
 * would round a 100-byte frame with 4096-byte alignment up to a page.
 * DeleteAllocator must release frames still live, so the instance keeps its live frames in a
 * hash set beside them (frame_set.c); that set also turns a Free of a frame that is not
 * live into a counted no-op that self_check reports.
 *
 * Complexity: Allocate and Free are O(1) expected (a stack pop or push plus a set insert or
 * remove), plus the heap's cost on a miss or on a Free that finds the list full.
 *
 * Memory: up to `depth` idle frames on the list, `depth` pointers for the list itself, 16 to 32
 * bytes per live frame of set table at its high-water mark, and the heap's own per-frame
 * overhead. reserved_bytes counts (live + listed) * FrameSize plus both tables.
 *
 * Thread safety: KS_CAP_THREAD_SAFE, with one mutex per instance held across each operation,
 * including the heap call on a miss (the heap is itself thread-safe; holding the lock keeps the
 * Frames bound exact without a reservation protocol).
 */
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "frame_set.h"
#include "framing.h"
#include "ksalloc.h"

#ifndef KS_LOOKASIDE_DEFAULT_FRAME_BYTES
#define KS_LOOKASIDE_DEFAULT_FRAME_BYTES 4096u
#endif
/* List depth: min(Frames, MAX_DEPTH), or UNBOUNDED_DEPTH when Frames is 0. */
#ifndef KS_LOOKASIDE_MAX_DEPTH
#define KS_LOOKASIDE_MAX_DEPTH 64u
#endif
#ifndef KS_LOOKASIDE_UNBOUNDED_DEPTH
#define KS_LOOKASIDE_UNBOUNDED_DEPTH 16u
#endif
#ifndef KS_LOOKASIDE_MAX_FRAME_BYTES
#define KS_LOOKASIDE_MAX_FRAME_BYTES ((size_t)256 << 20)
#endif
#ifndef KS_LOOKASIDE_MAX_ALIGN_BYTES
#define KS_LOOKASIDE_MAX_ALIGN_BYTES ((size_t)1 << 20)
#endif
/* MUST_ALLOCATE fills Frames frames up front; a larger promise is refused with
 * STATUS_INSUFFICIENT_RESOURCES instead of being attempted. */
#ifndef KS_LOOKASIDE_MAX_PREFILL_BYTES
#define KS_LOOKASIDE_MAX_PREFILL_BYTES ((size_t)1 << 30)
#endif
#ifndef KS_LOOKASIDE_MAX_PREFILL_FRAMES
#define KS_LOOKASIDE_MAX_PREFILL_FRAMES 65536u
#endif

_Static_assert(KS_LOOKASIDE_UNBOUNDED_DEPTH >= 1 && KS_LOOKASIDE_MAX_DEPTH >= 1, "a list holds at least one frame");
_Static_assert((KS_LOOKASIDE_MAX_ALIGN_BYTES & (KS_LOOKASIDE_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(KS_LOOKASIDE_DEFAULT_FRAME_BYTES <= KS_LOOKASIDE_MAX_FRAME_BYTES, "default frame within the limit");
_Static_assert(KS_LOOKASIDE_MAX_FRAME_BYTES <= ULONG_MAX, "FrameSize is a ULONG");

/* ---- The instance --------------------------------------------------------------------------- */

typedef struct lookaside {
    pthread_mutex_t lock; /* guards everything below but the constants */
    ks_frame_set live;
    void **listed;        /* the lookaside list, a stack: listed[0 .. listed_count) */
    ULONG listed_count;
    ULONG depth;
    ULONG frames_limit; /* 0 = unbounded */
    size_t frame_bytes;
    size_t align_bytes; /* what posix_memalign is asked for: at least sizeof(void *) */
    uint64_t hits, misses, refusals;
    uint64_t heap_failures;   /* misses the heap could not serve */
} lookaside;

static void *lookaside_heap_alloc(const lookaside *instance)
{
    void *frame = NULL;
    return posix_memalign(&frame, instance->align_bytes, instance->frame_bytes) == 0 ? frame : NULL;
}

static const ks_framing_rules lookaside_framing_rules = {
    .default_frames = 0, /* Frames 0 means no bound and stays 0 */
    .default_frame_bytes = KS_LOOKASIDE_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = KS_LOOKASIDE_MAX_FRAME_BYTES,
    .max_align_bytes = KS_LOOKASIDE_MAX_ALIGN_BYTES,
    .min_align_bytes = sizeof(void *), /* posix_memalign's minimum */
};

static NTSTATUS lookaside_check_framing(const KSALLOCATOR_FRAMING *framing, ks_framing_settled *settled)
{
    NTSTATUS status = ks_framing_settle(framing, &lookaside_framing_rules, settled);
    if (!NT_SUCCESS(status))
        return status;
    if ((framing->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) &&
        (framing->Frames > KS_LOOKASIDE_MAX_PREFILL_FRAMES ||
         (size_t)framing->Frames * settled->frame_bytes > KS_LOOKASIDE_MAX_PREFILL_BYTES))
        return STATUS_INSUFFICIENT_RESOURCES;
    return STATUS_SUCCESS;
}

static ULONG lookaside_depth(const KSALLOCATOR_FRAMING *framing)
{
    if (framing->Frames == 0)
        return KS_LOOKASIDE_UNBOUNDED_DEPTH;
    if (framing->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE)
        return framing->Frames; /* every promised frame is held from the start */
    return framing->Frames < KS_LOOKASIDE_MAX_DEPTH ? framing->Frames : KS_LOOKASIDE_MAX_DEPTH;
}

static void lookaside_release_all(lookaside *instance)
{
    for (ULONG index = 0; index < instance->listed_count; index++)
        free(instance->listed[index]);
    size_t cursor = 0;
    for (void *frame; (frame = ks_frame_set_next(&instance->live, &cursor)) != NULL;)
        free(frame);
    ks_frame_set_destroy(&instance->live);
    free(instance->listed);
    free(instance);
}

static bool lookaside_prefill(lookaside *instance)
{
    while (instance->listed_count < instance->depth) {
        void *frame = lookaside_heap_alloc(instance);
        if (frame == NULL)
            return false;
        instance->listed[instance->listed_count++] = frame;
    }
    return true;
}

static NTSTATUS lookaside_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context; /* frames come from the process heap; a shared heap is not used */
    ks_framing_settled settled;
    NTSTATUS status = lookaside_check_framing(framing, &settled);
    if (!NT_SUCCESS(status))
        return status;
    ks_framing_write_back(framing, &settled);
    lookaside *instance = calloc(1, sizeof *instance);
    if (instance == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    instance->depth = lookaside_depth(framing);
    instance->frames_limit = framing->Frames;
    instance->frame_bytes = settled.frame_bytes;
    instance->align_bytes = settled.align_bytes;
    instance->listed = calloc(instance->depth, sizeof *instance->listed);
    bool ready = instance->listed != NULL && ks_frame_set_init(&instance->live, KS_FRAME_SET_MIN_CAPACITY);
    if (ready && (framing->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE))
        ready = lookaside_prefill(instance);
    if (!ready || pthread_mutex_init(&instance->lock, NULL) != 0) {
        lookaside_release_all(instance);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    *context = instance;
    return STATUS_SUCCESS;
}

static void lookaside_delete(PVOID context)
{
    lookaside *instance = context;
    pthread_mutex_destroy(&instance->lock);
    lookaside_release_all(instance);
}

static PVOID lookaside_allocate(PVOID context)
{
    lookaside *instance = context;
    void *frame = NULL;
    pthread_mutex_lock(&instance->lock);
    if (instance->frames_limit != 0 && instance->live.count >= instance->frames_limit) {
        instance->refusals++;
    } else if (instance->listed_count > 0) {
        frame = instance->listed[--instance->listed_count];
        instance->hits++;
    } else {
        frame = lookaside_heap_alloc(instance);
        instance->misses++;
        instance->heap_failures += frame == NULL;
    }
    if (frame != NULL && !ks_frame_set_insert(&instance->live, frame)) {
        /* Cannot track it, so cannot release it at DeleteAllocator: put it back and refuse. */
        if (instance->listed_count < instance->depth)
            instance->listed[instance->listed_count++] = frame;
        else
            free(frame);
        frame = NULL;
    }
    pthread_mutex_unlock(&instance->lock);
    return frame;
}

static void lookaside_free(PVOID context, PVOID buffer)
{
    lookaside *instance = context;
    void *to_heap = NULL;
    pthread_mutex_lock(&instance->lock);
    /* A frame not live here is ignored (the set counts it; self_check reports it). */
    if (ks_frame_set_release(&instance->live, buffer)) {
        if (instance->listed_count < instance->depth)
            instance->listed[instance->listed_count++] = buffer;
        else
            to_heap = buffer;
    }
    pthread_mutex_unlock(&instance->lock);
    free(to_heap); /* the list is full: back to the heap, outside the lock */
}

/* The list: within its depth, every frame aligned, none also live, none twice. */
static bool lookaside_check_list(const lookaside *instance, char *why, size_t why_bytes)
{
    if (instance->listed_count > instance->depth) {
        snprintf(why, why_bytes, "lookaside: %u frames listed, deeper than the list's %u", (unsigned)instance->listed_count,
                 (unsigned)instance->depth);
        return false;
    }
    ks_frame_set seen;
    if (!ks_frame_set_init(&seen, KS_FRAME_SET_MIN_CAPACITY)) {
        snprintf(why, why_bytes, "lookaside: self_check cannot allocate its scratch table");
        return false;
    }
    bool ok = true;
    for (ULONG index = 0; ok && index < instance->listed_count; index++) {
        uintptr_t frame = (uintptr_t)instance->listed[index];
        const char *problem = NULL;
        if (frame == 0 || (frame & (instance->align_bytes - 1)) != 0)
            problem = "is NULL or misaligned";
        else if (ks_frame_set_contains(&instance->live, (void *)frame))
            problem = "is also live";
        else if (ks_frame_set_contains(&seen, (void *)frame))
            problem = "is listed twice";
        else if (!ks_frame_set_insert(&seen, (void *)frame))
            problem = "cannot be recorded (out of memory)";
        if (problem != NULL) {
            snprintf(why, why_bytes, "lookaside: listed frame %u at %p %s", (unsigned)index, (void *)frame, problem);
            ok = false;
        }
    }
    ks_frame_set_destroy(&seen);
    return ok;
}

static NTSTATUS lookaside_self_check(PVOID context, char *why, size_t why_bytes)
{
    lookaside *instance = context;
    bool ok = true;
    pthread_mutex_lock(&instance->lock);
    if (instance->frames_limit != 0 && instance->live.count > instance->frames_limit) {
        snprintf(why, why_bytes, "lookaside: %zu frames live, over the bound of %u", instance->live.count,
                 (unsigned)instance->frames_limit);
        ok = false;
    } else {
        ok = ks_frame_set_check(&instance->live, instance->align_bytes, "lookaside", why, why_bytes) &&
             lookaside_check_list(instance, why, why_bytes);
    }
    pthread_mutex_unlock(&instance->lock);
    return ok ? STATUS_SUCCESS : STATUS_DATA_ERROR;
}

static size_t lookaside_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    lookaside *instance = context;
    pthread_mutex_lock(&instance->lock);
    uint64_t frames_live = instance->live.count;
    uint64_t table_bytes = ks_frame_set_table_bytes(&instance->live) +
                           (uint64_t)instance->depth * sizeof instance->listed[0];
    const ks_counter counters[] = {
        {"hits", instance->hits},
        {"misses", instance->misses},
        {"refusals", instance->refusals},
        {"heap_failures", instance->heap_failures},
        {"depth", instance->depth},
        {"listed", instance->listed_count},
        {"frames_live", frames_live},
        {"reserved_bytes", (frames_live + instance->listed_count) * instance->frame_bytes + table_bytes},
        {"bad_frees", instance->live.foreign_releases},
    };
    pthread_mutex_unlock(&instance->lock);
    size_t count = 0;
    for (; count < sizeof counters / sizeof counters[0] && count < max_counters; count++)
        out[count] = counters[count];
    return count;
}

static const KSALLOCATOR_DISPATCH lookaside_dispatch = {
    .InitializeAllocator = lookaside_initialize,
    .DeleteAllocator = lookaside_delete,
    .Allocate = lookaside_allocate,
    .Free = lookaside_free,
};

const ks_allocator_entry ks_allocator_lookaside = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "lookaside",
    .description = "the stock KS allocator: bounded-depth lookaside list over the heap, at most Frames live",
    .caps = KS_CAP_BOUNDED | KS_CAP_THREAD_SAFE,
    .max_frame_bytes = KS_LOOKASIDE_MAX_FRAME_BYTES,
    .max_align_bytes = KS_LOOKASIDE_MAX_ALIGN_BYTES,
    .dispatch = &lookaside_dispatch,
    .self_check = lookaside_self_check,
    .counters = lookaside_counters,
};
