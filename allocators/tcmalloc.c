/*
 * tcmalloc.c -- `tcmalloc`: frames from gperftools' tcmalloc (Debian's libtcmalloc_minimal 2.10)
 * through its explicit tc_memalign / tc_free entry points.
 *
 * Design. tcmalloc has one process-wide heap and no per-instance heap or arena to destroy, so an
 * instance must know its live frames to honour "DeleteAllocator releases frames still live". It
 * keeps them in a side table: an open-addressing hash set of frame addresses (linear probing,
 * Fibonacci hashing, load factor at most 1/2, deletion by backward shift so there are no
 * tombstones). A side table rather than a header in front of each frame because a header would
 * change what tcmalloc is asked for: FrameSize + header crosses a size class for the power-of-two
 * frames streams use (measured with 2.10: a 4112-byte request is served from the 4608-byte class,
 * 12.5% more than 4096, and at 4096-byte alignment from 8192 bytes), and in front of an
 * A-aligned frame a header costs A bytes. With the table, tcmalloc sees exactly the request a
 * plain caller would make, which is the point of a peer in a benchmark. The table also lets Free
 * refuse an address that is not a live frame of this instance (counted in unknown_frees,
 * reported by self_check) instead of passing it to tc_free. Frames go back with tc_free, not
 * tc_free_sized: a tc_memalign block may sit in a larger size class than FrameSize names.
 * Shared heaps: there is nothing to share beyond the process heap -- every instance already draws
 * from the one tcmalloc page heap -- so KSPIN.heap is ignored and KS_CAP_SHARED_HEAP is not
 * claimed.
 *
 * Complexity. Allocate: tcmalloc's fast path (thread-cache pop) plus one expected-O(1) insert;
 * growing the table is amortised O(1). Free: expected-O(1) lookup and removal plus tc_free.
 * DeleteAllocator: O(table slots). self_check: O(table slots).
 *
 * Memory overhead. Table: 8 bytes per slot, between 2 and 4 slots per frame at the peak live
 * count (16-32 bytes per frame; it does not shrink). Plus tcmalloc's own: size-class rounding
 * (measured with Debian's 2.10 over 64 B..4 MiB: at most 20%, under 1% past 1 MiB), and for
 * alignments above a size class's natural alignment a larger class or, for page-sized and larger
 * alignments, whole pages (a 100-byte frame at 4096-byte alignment takes 4096).
 *
 * Thread safety: tcmalloc is thread-safe, the side table is not, so an instance is NOT
 * thread-safe (no KS_CAP_THREAD_SAFE): one call at a time, from any thread. Under TSan, Free and
 * Allocate release and acquire one sync object standing for tcmalloc's internal locks: tcmalloc
 * is not instrumented, so a frame freed on one thread and reused by another instance on another
 * thread would otherwise look like a race. The price is that TSan also sees an order between
 * that Free and that Allocate for unrelated accesses of the two threads.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <gperftools/malloc_extension_c.h>
#include <gperftools/tcmalloc.h>

#include "ksalloc.h"

#define TCMALLOC_DEFAULT_FRAME_BYTES 4096u
/* Limits stated to the harness, the same as the other general-purpose allocators' so that one
 * decoded framing fits them all (tcmalloc itself served 3 GiB frames, and 2 GiB alignments, when
 * measured). The verifier writes whole frames, so larger frames would cost that much each. */
#define TCMALLOC_MAX_FRAME_BYTES ((size_t)256 << 20)
#define TCMALLOC_MAX_ALIGN_BYTES ((size_t)1 << 20)
_Static_assert((TCMALLOC_MAX_ALIGN_BYTES & (TCMALLOC_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(TCMALLOC_DEFAULT_FRAME_BYTES <= TCMALLOC_MAX_FRAME_BYTES, "the default frame is within the limit");
_Static_assert(TCMALLOC_MAX_FRAME_BYTES <= UINT32_MAX, "FrameSize is a ULONG");
#define TCMALLOC_TABLE_MIN_SLOTS 64u
#define TCMALLOC_FIBONACCI 0x9E3779B97F4A7C15ull /* 2^64 / golden ratio, odd */

_Static_assert((TCMALLOC_TABLE_MIN_SLOTS & (TCMALLOC_TABLE_MIN_SLOTS - 1)) == 0, "table sizes are powers of two");
_Static_assert(sizeof(uintptr_t) == 8, "Fibonacci hashing below assumes 64-bit addresses");

#if defined(__SANITIZE_THREAD__)
#define TCMALLOC_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TCMALLOC_TSAN 1
#endif
#endif
#ifndef TCMALLOC_TSAN
#define TCMALLOC_TSAN 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#define TCMALLOC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TCMALLOC_ASAN 1
#endif
#endif
#ifndef TCMALLOC_ASAN
#define TCMALLOC_ASAN 0
#endif

#if TCMALLOC_TSAN
/* TSan's synchronisation annotations (sanitizer/tsan_interface.h, declared here because Debian's
 * gcc ships no sanitizer headers). One object stands for tcmalloc's internal locks and atomics,
 * which TSan cannot see because the library is not instrumented: every Free releases it before
 * the frame goes back to tcmalloc, every Allocate acquires it after a frame comes out, so all
 * accesses to a frame before its Free happen before all accesses after its reuse. */
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char tcmalloc_tsan_sync;
#define TCMALLOC_FRAME_ACQUIRED() __tsan_acquire(&tcmalloc_tsan_sync)
#define TCMALLOC_FRAME_RELEASED() __tsan_release(&tcmalloc_tsan_sync)
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
#define TCMALLOC_FRAME_ACQUIRED() ((void)0)
#define TCMALLOC_FRAME_RELEASED() ((void)0)
#endif

#if TCMALLOC_ASAN
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
    void **slots;         /* hash set of live frames; NULL marks an empty slot */
    size_t slot_count;    /* a power of two, >= 2 * frames_live */
    unsigned slot_shift;  /* 64 - log2(slot_count) */
    size_t frames_live;
    size_t frame_tc_bytes; /* tc_malloc_size of a frame (its size class), once one was handed out */
    uint64_t allocation_failures;
    uint64_t unknown_frees;
    const void *last_unknown_free;
} tcmalloc_instance;

/* ---- The live-frame table ------------------------------------------------------------------ */

static size_t table_home(const tcmalloc_instance *instance, const void *frame)
{
    return (size_t)(((uint64_t)(uintptr_t)frame * TCMALLOC_FIBONACCI) >> instance->slot_shift);
}

/* Index of frame's slot, or slot_count when frame is not in the table. */
static size_t table_find(const tcmalloc_instance *instance, const void *frame)
{
    size_t mask = instance->slot_count - 1;
    for (size_t i = table_home(instance, frame);; i = (i + 1) & mask) {
        if (instance->slots[i] == frame)
            return i;
        if (instance->slots[i] == NULL)
            return instance->slot_count;
    }
}

static void table_insert(tcmalloc_instance *instance, void *frame)
{
    size_t mask = instance->slot_count - 1;
    size_t i = table_home(instance, frame);
    while (instance->slots[i] != NULL)
        i = (i + 1) & mask;
    instance->slots[i] = frame;
}

/* Empties slot i and shifts back later members of its probe run so that no lookup stops early. */
static void table_remove_at(tcmalloc_instance *instance, size_t hole)
{
    size_t mask = instance->slot_count - 1;
    for (size_t i = (hole + 1) & mask; instance->slots[i] != NULL; i = (i + 1) & mask) {
        size_t home = table_home(instance, instance->slots[i]);
        /* The member at i may fill the hole iff the hole lies on its probe path home..i. */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            instance->slots[hole] = instance->slots[i];
            hole = i;
        }
    }
    instance->slots[hole] = NULL;
}

static bool table_resize(tcmalloc_instance *instance, size_t slot_count)
{
    void **old_slots = instance->slots;
    size_t old_count = instance->slot_count;
    void **slots = calloc(slot_count, sizeof *slots);
    if (slots == NULL)
        return false;
    unsigned log2_slots = (unsigned)__builtin_ctzll((unsigned long long)slot_count);
    instance->slots = slots;
    instance->slot_count = slot_count;
    instance->slot_shift = 64u - log2_slots;
    for (size_t i = 0; i < old_count; i++)
        if (old_slots[i] != NULL)
            table_insert(instance, old_slots[i]);
    free(old_slots);
    return true;
}

/* Makes room for one more frame at load factor <= 1/2. */
static bool table_reserve_one(tcmalloc_instance *instance)
{
    if ((instance->frames_live + 1) * 2 <= instance->slot_count)
        return true;
    if (instance->slot_count > SIZE_MAX / 2 / sizeof(void *))
        return false;
    return table_resize(instance, instance->slot_count * 2);
}

/* ---- Dispatch ------------------------------------------------------------------------------ */

static NTSTATUS tcmalloc_check_framing(PKSALLOCATOR_FRAMING framing)
{
    if (!ks_framing_align_valid(framing) || ks_framing_align_bytes(framing) > TCMALLOC_MAX_ALIGN_BYTES)
        return STATUS_INVALID_PARAMETER;
    if (framing->FrameSize == 0)
        framing->FrameSize = TCMALLOC_DEFAULT_FRAME_BYTES;
    if (framing->FrameSize > TCMALLOC_MAX_FRAME_BYTES)
        return STATUS_INVALID_PARAMETER;
    return STATUS_SUCCESS;
}

static NTSTATUS tcmalloc_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context; /* the pin's shared heap, if any, has nothing to offer (top comment) */
    if (framing == NULL || context == NULL)
        return STATUS_INVALID_PARAMETER;
    NTSTATUS status = tcmalloc_check_framing(framing);
    if (!NT_SUCCESS(status))
        return status;
    tcmalloc_instance *instance = calloc(1, sizeof *instance);
    if (instance == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    instance->frame_bytes = framing->FrameSize;
    instance->align_bytes = ks_framing_align_bytes(framing);
    if (!table_resize(instance, TCMALLOC_TABLE_MIN_SLOTS)) {
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
    for (size_t i = 0; i < instance->slot_count; i++)
        if (instance->slots[i] != NULL)
            tc_free(instance->slots[i]);
    free(instance->slots);
    free(instance);
}

static PVOID tcmalloc_allocate(PVOID context)
{
    tcmalloc_instance *instance = context;
    if (!table_reserve_one(instance)) {
        instance->allocation_failures++;
        return NULL;
    }
    void *frame = tc_memalign(instance->align_bytes, instance->frame_bytes);
    if (frame == NULL) {
        instance->allocation_failures++;
        return NULL;
    }
    TCMALLOC_FRAME_ACQUIRED();
    table_insert(instance, frame);
    instance->frames_live++;
    if (instance->frame_tc_bytes == 0)
        instance->frame_tc_bytes = tc_malloc_size(frame);
    return frame;
}

static void tcmalloc_free(PVOID context, PVOID buffer)
{
    tcmalloc_instance *instance = context;
    if (buffer == NULL)
        return;
    size_t slot = table_find(instance, buffer);
    if (slot == instance->slot_count) {
        instance->unknown_frees++;
        instance->last_unknown_free = buffer;
        return;
    }
    table_remove_at(instance, slot);
    instance->frames_live--;
    TCMALLOC_FRAME_RELEASED();
    tc_free(buffer);
}

/* ---- Self-check and counters ---------------------------------------------------------------- */

/* Checks one table member: reachable from its home slot, aligned, owned and big enough. */
static NTSTATUS tcmalloc_check_slot(const tcmalloc_instance *instance, size_t slot, char *why, size_t why_bytes)
{
    const void *frame = instance->slots[slot];
    if (table_find(instance, frame) != slot) {
        snprintf(why, why_bytes, "tcmalloc: frame %p in slot %zu is unreachable from its home slot %zu or listed twice",
                 frame, slot, table_home(instance, frame));
        return STATUS_DATA_ERROR;
    }
    if (((uintptr_t)frame & (instance->align_bytes - 1)) != 0) {
        snprintf(why, why_bytes, "tcmalloc: frame %p is not aligned to %zu bytes", frame, instance->align_bytes);
        return STATUS_DATA_ERROR;
    }
    if (MallocExtension_GetOwnership(frame) != MallocExtension_kOwned) {
        snprintf(why, why_bytes, "tcmalloc: frame %p is live in the instance but tcmalloc does not own it", frame);
        return STATUS_DATA_ERROR;
    }
    if (tc_malloc_size((void *)(uintptr_t)frame) < instance->frame_bytes) {
        snprintf(why, why_bytes, "tcmalloc: frame %p has %zu usable bytes, less than the %zu-byte frame", frame,
                 tc_malloc_size((void *)(uintptr_t)frame), instance->frame_bytes);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static NTSTATUS tcmalloc_self_check(PVOID context, char *why, size_t why_bytes)
{
    const tcmalloc_instance *instance = context;
    if (instance->unknown_frees != 0) {
        snprintf(why, why_bytes, "tcmalloc: %llu Free call(s) of addresses that were not live frames, last %p",
                 (unsigned long long)instance->unknown_frees, instance->last_unknown_free);
        return STATUS_DATA_ERROR;
    }
    size_t members = 0;
    for (size_t slot = 0; slot < instance->slot_count; slot++) {
        if (instance->slots[slot] == NULL)
            continue;
        members++;
        NTSTATUS status = tcmalloc_check_slot(instance, slot, why, why_bytes);
        if (!NT_SUCCESS(status))
            return status;
    }
    if (members != instance->frames_live || instance->frames_live * 2 > instance->slot_count) {
        snprintf(why, why_bytes, "tcmalloc: table of %zu slots holds %zu frames, frames_live says %zu",
                 instance->slot_count, members, instance->frames_live);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static size_t tcmalloc_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const tcmalloc_instance *instance = context;
    size_t process_allocated_bytes = 0, process_heap_bytes = 0;
    MallocExtension_GetNumericProperty("generic.current_allocated_bytes", &process_allocated_bytes);
    MallocExtension_GetNumericProperty("generic.heap_size", &process_heap_bytes);
    const ks_counter all[] = {
        {"frames_live", instance->frames_live},
        /* What this instance holds: its frames in tcmalloc's size class, and its table. */
        {"reserved_bytes", (uint64_t)instance->frames_live * instance->frame_tc_bytes +
                               instance->slot_count * sizeof(void *)},
        {"frame_tc_bytes", instance->frame_tc_bytes},
        {"table_slots", instance->slot_count},
        {"allocation_failures", instance->allocation_failures},
        {"unknown_frees", instance->unknown_frees},
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
    .description = "gperftools tcmalloc 2.x: tc_memalign/tc_free, live frames in a side hash set for DeleteAllocator",
    .caps = 0,
    .max_frame_bytes = TCMALLOC_MAX_FRAME_BYTES,
    .max_align_bytes = TCMALLOC_MAX_ALIGN_BYTES,
    .dispatch = &tcmalloc_dispatch,
    .self_check = tcmalloc_self_check,
    .counters = tcmalloc_counters,
};
